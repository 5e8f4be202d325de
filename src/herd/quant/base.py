"""What every quantized linear shares: its buffers keep their own dtypes.

``model.to(torch.bfloat16)`` casts every floating tensor of a module, which would turn
fp8 weights or fp32 scales into bf16. A ``QuantizedLinear`` lets a cast move its
buffers between devices but restores each buffer's dtype from the original tensor, so
casting a quantized model changes only the compute dtype (that of the activations).
"""

from __future__ import annotations

from torch import nn


class QuantizedLinear(nn.Module):
    in_features: int
    out_features: int

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        before = {name: buf for name, buf in self._buffers.items() if buf is not None}
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        self._moved({n: b.device for n, b in before.items()})
        return out

    def _moved(self, old_devices: dict) -> None:
        """Hook for layouts that depend on the device (int4)."""
