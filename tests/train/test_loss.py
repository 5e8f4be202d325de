from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from herd.train.loss import chunked_cross_entropy


def _setup(n_tokens=300, dim=16, vocab=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(vocab, dim, generator=g) * 0.1).requires_grad_()
    hidden = torch.randn(3, n_tokens // 3, dim, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (3, n_tokens // 3), generator=g)
    labels[0, :17] = -100
    labels[2, 40:45] = -100
    return weight, hidden, labels


def _reference(weight, hidden, labels):
    """Plain full-logits cross-entropy, its gradients, then the grads cleared."""
    full = F.cross_entropy(F.linear(hidden, weight).float().flatten(0, 1), labels.flatten(), reduction="sum")
    full.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad, weight.grad = None, None
    return full.detach(), grads


@pytest.mark.parametrize("mode", ["recompute", "fused"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 100, 1000])
def test_chunked_equals_full_cross_entropy(chunk, mode):
    weight, hidden, labels = _setup()
    full, (g_hidden, g_weight) = _reference(weight, hidden, labels)
    loss, n = chunked_cross_entropy(hidden, weight, labels, chunk, mode=mode)
    (2.5 * loss).backward()  # the incoming gradient scales the stored ones
    assert n.item() == (labels != -100).sum().item() == 300 - 22
    torch.testing.assert_close(loss.detach(), full, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(hidden.grad, 2.5 * g_hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, 2.5 * g_weight, rtol=1e-5, atol=2e-6)


def test_without_grad_it_only_sums():
    weight, hidden, labels = _setup()
    full, _ = _reference(weight, hidden, labels)
    with torch.no_grad():
        loss, _ = chunked_cross_entropy(hidden, weight, labels, 50)
    torch.testing.assert_close(loss, full, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("mode", ["recompute", "fused"])
def test_bf16_autocast_is_close_to_fp32(mode):
    weight, hidden, labels = _setup()
    full, (g_hidden, _) = _reference(weight, hidden, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = chunked_cross_entropy(hidden, weight, labels, 64, mode=mode)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss.detach(), full, rtol=2e-2, atol=0)
    torch.testing.assert_close(hidden.grad, g_hidden, rtol=0.1, atol=5e-3)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest = t.numel()
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("loss_mode", ["recompute", "fused"])
def test_full_logits_are_never_materialised(loss_mode):
    vocab, n_tokens, chunk = 8000, 600, 64
    weight, hidden, labels = _setup(n_tokens=n_tokens, vocab=vocab)
    with _LargestTensor() as mode:
        loss, _ = chunked_cross_entropy(hidden, weight, labels, chunk, mode=loss_mode)
        loss.backward()
    # nothing bigger than one chunk of logits (or the head and its gradient) ever exists
    assert mode.largest <= max(chunk * vocab, weight.numel()), mode.shapes[-3:]
    assert mode.largest < n_tokens * vocab / 4

    with _LargestTensor() as plain:  # while the full computation does make (tokens, vocab) tensors
        F.cross_entropy(F.linear(hidden, weight).flatten(0, 1), labels.flatten(), reduction="sum").backward()
    assert plain.largest >= n_tokens * vocab


def test_bad_shapes_are_refused():
    weight, hidden, labels = _setup()
    with pytest.raises(ValueError, match="do not match"):
        chunked_cross_entropy(hidden, weight, labels[:, :-1], 16)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, weight, labels, 0)
    with pytest.raises(ValueError, match="weight"):
        chunked_cross_entropy(hidden, weight[:, :3], labels, 16)
    with pytest.raises(ValueError, match="mode"):
        chunked_cross_entropy(hidden, weight, labels, 16, mode="magic")


def test_recompute_mode_saves_only_the_hidden_states():
    weight, hidden, labels = _setup(n_tokens=600, vocab=8000)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_cross_entropy(hidden, weight, labels, 64, mode="recompute")
    # the flattened hidden states, the weight (a parameter: no copy) and the labels
    assert sorted(t.numel() for t in saved) == sorted([hidden.numel(), weight.numel(), labels.numel()])
