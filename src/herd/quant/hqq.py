"""HQQ (Badri & Shaji, 2023, "Half-Quadratic Quantization"): int4 group-wise weights
chosen without calibration data.

Round-to-nearest takes a group's scale from its min and max, so one outlier stretches
the grid for the other 127 weights. HQQ instead minimises the lp norm (p < 1) of the
weight error ``w - dequant(quant(w))`` of each group: a norm with p < 1 prefers an error
that is large on a few weights and small on the rest, so the grid can give up an outlier
to fit the bulk. The objective is not smooth, so HQQ splits it (half-quadratic
splitting): with an auxiliary error ``e`` it alternates

1. ``e = shrink_p(w - dequant(quant(w)), beta)``: the generalized soft-threshold, the
   exact minimiser of ``|e|^p + beta/2 (e - x)^2``: large errors pass into ``e``,
   small ones are zeroed;
2. a closed-form least-squares update of the quantization parameters so that the
   dequantized weights reproduce ``w - e``, i.e. fit the weights *without* the errors
   ``e`` has taken (the outliers);

with ``beta`` growing by ``kappa`` = 1.01 per step from 10, keeping the best parameters
seen. HQQ stops the whole tensor at the first step whose mean error rises; here each
group keeps its own best instead, so a group's result does not depend on which other
groups share its batch (on the bundled model's weights HQQ's rule never fires within
the 6 steps anyway).

What herd changes, and why (measured on the bundled base model's block linears, lp
error of the weights relative to round-to-nearest, group 128 / 32):

- **Integer zero points.** HQQ fixes the scale and optimises a *float* zero point.
  herd's int4 (compressed-tensors' asymmetric int4, ``Int4Linear``) stores an integer
  zero point in [-8, 7], and with an integer zero the grid ``(q - z) * s`` is the
  multiples of ``s`` whatever ``z`` is: the zero point only slides a 16-value window
  along that grid, which min/max already places. Rounding HQQ's optimised float zero
  therefore gives back round-to-nearest exactly (1.000 / 1.000), and rounding inside the
  loop cannot do better. So the free parameter is the **scale**: step 2 fits the scale
  by least squares, ``s = <w - e, q - z> / <q - z, q - z>``, and HQQ's zero update
  (``z = mean(q - (w - e) / s)``) is kept, rounded to an integer and clamped to
  [-8, 7]. Scale and integer zero optimised: 0.957 / 0.945 (HQQ's own float zero, not
  storable here: 0.975 / 0.946).
- **The error is measured in grid steps** (``(w - dequant) / s``) inside the shrinkage.
  HQQ applies ``beta`` = 10 to the raw weight error; for Llama-scale weights (errors
  ~1e-3) its threshold ``beta^(-1/(2-p))`` ~ 0.17 is never reached, so ``e`` is all zeros
  and HQQ is a plain least-squares fit (this file's scale fit with weight-unit errors:
  ``e`` zero everywhere, 0.964 / 0.967 after 20 steps). In steps the same ``beta`` and
  ``p`` = 0.7 shrink about two thirds of the errors, and the optimiser minimises the lp
  norm it is meant to, whatever the weights' magnitude (0.956 / 0.944 after 20 steps).
- ``p`` = 0.7, ``beta`` = 10 and ``kappa`` = 1.01 are HQQ's defaults. HQQ runs 20 steps;
  the plain least-squares scale step moves the scale a little each time (lp error 0.967
  after 10 steps, 0.956 after 20, 0.948 after 40 at group 128), so the step is
  over-relaxed, ``s <- s + omega (s_ls - s)``. With ``omega`` = 3, 6 steps reach what 20
  plain ones do (0.957 / 0.945; omega 2: 0.955 / 0.944 after 10 steps; 0.947 / 0.941
  after 20) at under a third of the time: each step is ~18 passes over the weights, two
  of them ``log``/``exp`` for ``|x|^(p-1)``. Keeping the best parameters of each group
  makes any ``omega`` safe: the result is never worse than round-to-nearest in the lp
  norm, group by group.

What the lp norm costs: p < 1 gives up outliers that an L2 measure (a layer's output
MSE) counts squared. On the bundled model the weights' L2 error falls too (0.920 /
0.935), and on Student-t weights with 5 degrees of freedom so does the output MSE on
random inputs (by 3-9 %); with 3 degrees of freedom, or 1 % gross outliers, the lp error
still falls ~5 % but the output MSE can rise by up to 3 %.

Runs in fp32 on the weight's device, every group of a layer at once; on CPU in slices
small enough to stay in the cache, one single-threaded slice per CPU thread, and
``quantize_int4_hqq_many`` batches a model's small linears together. The result is the
``(q, scale, zero_point)`` triple round-to-nearest and GPTQ produce, stored and run by
``Int4Linear``. Measured here (2 cores, another process starting up beside it): the block
linears of a Llama-3.2-1B-shaped model (973M weights, group 128) in 65 s, round-to-nearest
in 9; one 2048x8192 weight in 0.9 s, where hqq 0.2.8's own CPU optimizer takes 13 s.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from herd.quant.int4 import QMAX, QMIN, check_group_size, int4_params

P_NORM = 0.7
BETA = 10.0
KAPPA = 1.01
ITERS = 6
OMEGA = 3.0  # over-relaxation of the least-squares scale step
_CPU_SLICE = 1 << 20  # weights per slice on CPU: 4 MB fp32 temporaries, cache-sized
_TINY = 1e-12


def _lp_terms(x: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """``|x|`` and ``|x|^(p-1)`` (exp/log: twice as fast as ``pow`` on CPU)."""
    a = x.abs()
    return a, torch.exp(torch.log(a.clamp_min(_TINY)) * (p - 1.0))


def _hqq_slice(w: Tensor, p: float, beta: float, kappa: float, iters: int, omega: float
               ) -> tuple[Tensor, Tensor]:
    """HQQ for groups ``w`` [G, g] (fp32): ``(scale [G, 1], zero_point [G, 1])``."""
    scale, zero = int4_params(w)
    scale, zero = scale[:, None], zero[:, None]
    g = w.shape[-1]
    best_err = best_scale = best_zero = None
    for step in range(iters + 1):
        u = w / scale  # the weights in grid steps
        d = torch.round(u).clamp_(QMIN - zero, QMAX - zero)  # q - z
        x = u.sub_(d)  # error in steps
        a, a_pm1 = _lp_terms(x, p)
        err = torch.linalg.vecdot(a, a_pm1).unsqueeze(-1).mul_(scale.pow(p))  # sum |w - dequant|^p
        if best_err is None:
            best_err, best_scale, best_zero = err, scale, zero
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_scale = torch.where(better, scale, best_scale)
            best_zero = torch.where(better, zero, best_zero)
        if step == iters:
            break
        # shrinkage: e = sign(x) max(|x| - |x|^(p-1) / beta, 0); what stays for the fit is
        # y = x - e = clamp(x, -c, c) with c = |x|^(p-1) / beta
        c = a_pm1.div_(beta)
        y = torch.maximum(torch.minimum(x, c, out=a), c.neg_(), out=a)
        # target in steps: (w - e) / s = d + y; sums for the zero and scale updates
        sum_y = y.sum(-1, keepdim=True)
        sum_d = d.sum(-1, keepdim=True)
        sum_yd = torch.linalg.vecdot(y, d).unsqueeze(-1)
        sum_dd = torch.linalg.vecdot(d, d).unsqueeze(-1)
        # HQQ's zero update z + mean(q - (w - e) / s - z) = z - mean(y), held to the integers
        new_zero = (zero - torch.round(sum_y / g)).clamp_(QMIN, QMAX)
        dz = new_zero - zero
        # least squares: s' = <w - e, q - z'> / <q - z', q - z'> with q - z' = d - dz
        num = sum_yd + sum_dd - dz * (sum_y + sum_d)
        den = (sum_dd - 2 * dz * sum_d + g * dz * dz).clamp_min(_TINY)
        scale = (scale * (1.0 + omega * (num / den - 1.0))).clamp_min(1e-8)
        zero = new_zero
        beta *= kappa
    return best_scale, best_zero


@torch.no_grad()
def hqq_params(groups: Tensor, *, p: float = P_NORM, beta: float = BETA, kappa: float = KAPPA,
               iters: int = ITERS, omega: float = OMEGA) -> tuple[Tensor, Tensor]:
    """HQQ's scale and integer zero point for each row of ``groups`` [rows, g] (one group a
    row): ``(scale fp32 [rows], zero_point [rows])``, the zero point an integer-valued
    float in [-8, 7] (``int4_params``' convention)."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"HQQ's lp norm needs 0 < p <= 1, got p={p}")
    if beta <= 0 or kappa < 1 or iters < 0 or not 0 < omega < 4:
        raise ValueError(f"HQQ needs beta > 0, kappa >= 1, iters >= 0, 0 < omega < 4; got beta={beta}, "
                         f"kappa={kappa}, iters={iters}, omega={omega}")
    w = groups.detach().to(torch.float32)
    if w.device.type != "cpu":
        scale, zero = _hqq_slice(w, p, beta, kappa, iters, omega)
        return scale[:, 0], zero[:, 0]
    parts = w.split(max(1, _CPU_SLICE // max(1, w.shape[-1])))
    threads = torch.get_num_threads()
    # one single-threaded slice per CPU thread: no thread barrier inside each of the ~20 torch
    # ops of a step, where a CPU shared with other processes stalls for a time slice each
    # (measured here under load: 5.5 s against 60 s for the same result)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(threads, len(parts))) as pool:
            results = list(pool.map(lambda part: _hqq_slice(part, p, beta, kappa, iters, omega), parts))
    finally:
        torch.set_num_threads(threads)
    scales = [s[:, 0] for s, _ in results]
    zeros = [z[:, 0] for _, z in results]
    return torch.cat(scales), torch.cat(zeros)


def quantize_int4_hqq(weight: Tensor, group_size: int = 128, **options: float) -> tuple[Tensor, Tensor, Tensor]:
    """HQQ int4: ``(q int8 [out, in], scale fp32 [out, in/g], zero_point int8 [out, in/g])``,
    the layout of ``quantize_int4_groupwise``; ``options``: ``p``, ``beta``, ``kappa``, ``iters``,
    ``omega``."""
    return quantize_int4_hqq_many({"weight": weight}, group_size, **options)["weight"]


def quantize_int4_hqq_many(weights: Mapping[str, Tensor], group_size: int = 128, **options: float
                           ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """``quantize_int4_hqq`` for every named weight, consecutive weights on one device
    optimised together up to a slice's size (the same result as one by one: each group is
    optimised on its own). Only one batch is held in fp32 at a time. A bad weight raises
    ``ValueError`` naming it."""
    groups: dict[str, Tensor] = {}
    for name, weight in weights.items():
        try:
            if weight.dim() != 2:
                raise ValueError(f"HQQ quantizes 2-D linear weights, got shape {tuple(weight.shape)}")
            check_group_size(weight.shape[1], group_size)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        groups[name] = weight.detach().reshape(-1, group_size)  # a view: cast to fp32 batch by batch
    params: dict[str, tuple[Tensor, Tensor]] = {}
    batch: list[str] = []

    def flush() -> None:
        if batch:
            together = groups[batch[0]] if len(batch) == 1 else torch.cat([groups[n] for n in batch])
            scale, zero = hqq_params(together, **options)
            sizes = [groups[n].shape[0] for n in batch]
            params.update(zip(batch, zip(scale.split(sizes), zero.split(sizes), strict=True), strict=True))
            batch.clear()

    for name, g in groups.items():
        if batch and (groups[batch[0]].device != g.device
                      or sum(groups[n].numel() for n in batch) + g.numel() > _CPU_SLICE):
            flush()
        batch.append(name)
    flush()
    out = {}
    for name, weight in weights.items():
        scale, zero = params[name]
        w = groups.pop(name).to(torch.float32)
        q = (torch.round(w / scale[:, None]) + zero[:, None]).clamp_(QMIN, QMAX)
        out[name] = (q.reshape(weight.shape).to(torch.int8), scale.reshape(weight.shape[0], -1),
                     zero.reshape(weight.shape[0], -1).to(torch.int8))
    return out
