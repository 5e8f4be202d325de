"""A matrix-vector kernel for decoding on x86 CPUs, and the Linear that uses it.

Decoding one token per row reads every weight once per step, so its speed is the memory
bandwidth the linear layers achieve. On the 2-core AMD EPYC (AVX2, no AVX-512) machines
herd is developed on, ``F.linear`` with one row reaches about 16 GB/s: MKL's sgemv and
ATen's bf16 gemv read about what one core can pull, with one thread or two, and ATen's
OpenMP gemv falls to a few GB/s when another process wants a core. A plain AVX2 loop
that streams eight weight rows at once against the input vector, on every core, reaches
25-35 GB/s there.

This module builds that loop (C, once, with the system C compiler; the .so is cached)
and swaps it into ``nn.Linear`` for the products it handles: CPU, fp32 or bf16, at most
``MAX_ROWS`` rows, no gradient. Everything else (prefill, training, CUDA) goes to
``F.linear`` as before. The kernel runs on torch's OpenMP threads (``ThreadChoice``
falls back to one thread while another process makes two slower).

Results equal ``F.linear``'s up to the order of the fp32 additions (the kernel
accumulates in fp32, as MKL and ATen do, and rounds bf16 outputs to nearest-even).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROWS = 8  # more rows than this is a matrix-matrix product: F.linear does it well
PARALLEL_BYTES = 1 << 20  # smaller weights are read by the calling thread alone

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 8

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
static inline __m256 load8_f32(const void *p, long i) { return _mm256_loadu_ps((const float *)p + i); }
static inline __m256 load8_bf16(const void *p, long i) {
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline float get_f32(const void *p, long i) { return ((const float *)p)[i]; }
static inline float get_bf16(const void *p, long i) {
  uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t to_bf16(float f) {  /* round to nearest even; NaN stays NaN */
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* out[r] = dot(x, w[r]) for `rows` consecutive weight rows of length K. */
#define DOT_ROWS(NAME, LOAD8, GET)                                                  \
static void NAME(const float *x, const void *w, long K, int rows, float *out) {     \
  __m256 acc[ROWS];                                                                 \
  for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();                      \
  long k = 0;                                                                       \
  if (rows == ROWS) {                                                               \
    for (; k + 8 <= K; k += 8) {                                                    \
      __m256 xv = _mm256_loadu_ps(x + k);                                           \
      _Pragma("GCC unroll 8")                                                       \
      for (int r = 0; r < ROWS; r++) acc[r] = _mm256_fmadd_ps(LOAD8(w, r * K + k), xv, acc[r]); \
    }                                                                               \
  } else {                                                                          \
    for (; k + 8 <= K; k += 8) {                                                    \
      __m256 xv = _mm256_loadu_ps(x + k);                                           \
      for (int r = 0; r < rows; r++) acc[r] = _mm256_fmadd_ps(LOAD8(w, r * K + k), xv, acc[r]); \
    }                                                                               \
  }                                                                                 \
  for (int r = 0; r < rows; r++) {                                                  \
    float s = hsum(acc[r]);                                                         \
    for (long j = k; j < K; j++) s += x[j] * GET(w, r * K + j);                     \
    out[r] = s;                                                                     \
  }                                                                                 \
}
DOT_ROWS(dot_rows_f32, load8_f32, get_f32)
DOT_ROWS(dot_rows_bf16, load8_bf16, get_bf16)

/* y (B, N) = x (B, K) @ w (N, K)^T, all fp32 (bf16 == 0) or all bf16. The rows of w are
   split evenly over `threads` OpenMP threads (torch's own team). Returns 1 when out of memory. */
int herd_gemv(const void *x, const void *w, void *y, long B, long N, long K, int bf16, int threads) {
  long blocks = (N + ROWS - 1) / ROWS;
  size_t elem = bf16 ? 2 : 4;
  float *xf = (float *)x, *buffer = NULL;
  if (bf16) {  /* the input vector in fp32, once per call */
    xf = buffer = (float *)malloc(sizeof(float) * B * K);
    if (!buffer) return 1;
    for (long i = 0; i < B * K; i++) xf[i] = get_bf16(x, i);
  }
  #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (long blk = 0; blk < blocks; blk++) {
    long n0 = blk * ROWS;
    int rows = (int)(N - n0 < ROWS ? N - n0 : ROWS);
    const void *wb = (const char *)w + (size_t)n0 * K * elem;
    float out[ROWS];
    for (long b = 0; b < B; b++) {
      if (bf16) dot_rows_bf16(xf + b * K, wb, K, rows, out);
      else dot_rows_f32(xf + b * K, wb, K, rows, out);
      for (int r = 0; r < rows; r++) {
        if (bf16) ((uint16_t *)y)[b * N + n0 + r] = to_bf16(out[r]);
        else ((float *)y)[b * N + n0 + r] = out[r];
      }
    }
  }
  free(buffer);
  return 0;
}
"""

_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]


def _cache_dir() -> Path:
    root = os.environ.get("HERD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "herd")
    return Path(root) / "kernels"


def _build() -> ctypes.CDLL:
    """Compile the kernel (once per source and flags; the .so is cached) and load it."""
    tag = hashlib.sha256((_SOURCE + " ".join(_FLAGS)).encode()).hexdigest()[:16]
    lib_path = _cache_dir() / f"herd_gemv_{tag}.so"
    if not lib_path.exists():
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise RuntimeError("no C compiler (cc or gcc) on PATH")
        lib_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
            src, out = Path(tmp) / "herd_gemv.c", Path(tmp) / lib_path.name
            src.write_text(_SOURCE)
            done = subprocess.run([compiler, *_FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{compiler} failed to build the gemv kernel:\n{done.stderr[-2000:]}")
            os.replace(out, lib_path)  # atomic: a concurrent build never loads half a file
    lib = ctypes.CDLL(str(lib_path))  # its libgomp.so.1 is the one torch has loaded: one team
    lib.herd_gemv.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int] * 2
    lib.herd_gemv.restype = ctypes.c_int
    return lib


@functools.cache
def _library() -> ctypes.CDLL | None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None
    try:
        return _build()
    except (OSError, RuntimeError) as e:
        warnings.warn(f"herd's CPU gemv kernel is unavailable, decoding uses F.linear: {e}", stacklevel=3)
        return None


def gemv_available() -> bool:
    """Whether the kernel runs here (x86-64 with AVX2 and FMA, and a C compiler)."""
    return _library() is not None


class ThreadChoice:
    """All of torch's threads or one, per weight shape, whichever has been faster lately.

    With the machine to itself the kernel reads twice as fast on two cores as on one; but
    an OpenMP team waits for its slowest thread, and when another process wants a core
    that wait made two threads four times slower than one. So each shape keeps a moving
    average of the bandwidth each choice reached, and every ``probe_every``-th product of
    that shape tries the other choice, to notice when the machine changes.
    """

    def __init__(self, probe_every: int = 32, smoothing: float = 0.3) -> None:
        self.probe_every, self.smoothing = probe_every, smoothing
        self.rate: dict[tuple[tuple[int, ...], int], float] = {}  # (shape, threads) -> bytes/s
        self.calls: dict[tuple[int, ...], int] = {}

    def pick(self, shape: tuple[int, ...], threads: int) -> int:
        if threads <= 1:
            return 1
        n = self.calls[shape] = self.calls.get(shape, 0) + 1
        many, one = self.rate.get((shape, threads), math.inf), self.rate.get((shape, 1), 0.0)
        best, other = (threads, 1) if many >= one else (1, threads)
        return other if n % self.probe_every == 0 else best

    def record(self, shape: tuple[int, ...], threads: int, nbytes: int, seconds: float) -> None:
        rate, key = nbytes / max(seconds, 1e-9), (shape, threads)
        old = self.rate.get(key)
        self.rate[key] = rate if old is None else old + self.smoothing * (rate - old)


_threads = ThreadChoice()
_BF16 = {torch.float32: 0, torch.bfloat16: 1}  # the dtypes the kernel takes: is it bf16?


def _gemv_eager(x: Tensor, weight: Tensor) -> Tensor:
    n, k = weight.shape
    x = x if x.is_contiguous() else x.contiguous()
    y = x.new_empty((*x.shape[:-1], n))
    nbytes = weight.numel() * weight.element_size()
    shape = (n, k)
    threads = _threads.pick(shape, torch.get_num_threads()) if nbytes >= PARALLEL_BYTES else 1
    start = time.perf_counter()
    if _library().herd_gemv(x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.numel() // k, n, k,
                            _BF16[x.dtype], threads):
        raise MemoryError("herd_gemv: no memory for the fp32 copy of its input")
    if threads > 1 or nbytes >= PARALLEL_BYTES:
        _threads.record(shape, threads, nbytes, time.perf_counter() - start)
    return y


@torch.library.custom_op("herd::cpu_gemv", mutates_args=())
def cpu_gemv(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight.T`` for a few rows of x (CPU, fp32 or bf16, weight contiguous)."""
    return _gemv_eager(x, weight)


@cpu_gemv.register_fake
def _(x: Tensor, weight: Tensor) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def handles(x: Tensor, weight: Tensor) -> bool:
    """Whether ``cpu_gemv`` takes this product (else ``F.linear`` does)."""
    return (
        x.is_cpu
        and x.dtype is weight.dtype
        and x.dtype in _BF16
        and x.numel() <= MAX_ROWS * x.shape[-1]
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class GemvLinear(nn.Linear):
    """An ``nn.Linear`` whose few-row CPU products run on the gemv kernel."""

    def forward(self, x: Tensor) -> Tensor:
        if not handles(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        y = cpu_gemv(x, self.weight) if torch.compiler.is_compiling() else _gemv_eager(x, self.weight)
        return y if self.bias is None else y + self.bias


def use_cpu_gemv(model: nn.Module) -> int:
    """Turn every ``nn.Linear`` of ``model`` into a ``GemvLinear`` in place (same
    parameters, same state_dict; only the class changes). Returns how many were
    changed; 0 when the kernel is unavailable here."""
    if not gemv_available():
        return 0
    changed = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = GemvLinear
            changed += 1
    return changed
