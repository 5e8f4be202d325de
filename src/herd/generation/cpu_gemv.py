"""A matrix-vector kernel for decoding on x86 CPUs, and the Linear that uses it.

Decoding one token per row reads every weight once per step, so its speed is the memory
bandwidth the linear layers achieve. On the AMD EPYC machines herd is developed on,
``F.linear`` with one row reaches about 16 GB/s (MKL's sgemv and ATen's bf16 gemv read
about what one core can pull, with one thread or two), while a plain AVX2 loop that
streams eight weight rows at once against the same input vector, run on every core,
reaches the ~30 GB/s the memory delivers to two cores. This module compiles that loop
(C, ~80 lines, built once with the system C compiler and cached) and swaps it into
``nn.Linear`` for the inputs it handles: CPU, fp32 or bf16, at most ``MAX_ROWS`` rows, no
gradient. Everything else (prefill, training, CUDA) goes to ``F.linear`` as before.

Results equal ``F.linear``'s up to the order of the fp32 additions (the kernel
accumulates in fp32, as MKL and ATen do, and rounds bf16 outputs to nearest-even).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_ROWS = 8  # more rows than this is a matrix-matrix product: F.linear does it well
PARALLEL_BYTES = 1 << 20  # smaller weights are read by the calling thread alone

_SOURCE = r"""
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
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

/* ---- one product, split in chunks of CHUNK blocks that threads claim as they go ---- */

#define CHUNK 16

typedef struct {
  const float *xf; const void *w; void *y; long B, N, K; int bf16, helpers;
} job_t;

static void do_blocks(const job_t *j, long first, long last) {
  size_t elem = j->bf16 ? 2 : 4;
  float out[ROWS];
  for (long blk = first; blk < last; blk++) {
    long n0 = blk * ROWS;
    int rows = (int)(j->N - n0 < ROWS ? j->N - n0 : ROWS);
    const void *wb = (const char *)j->w + (size_t)n0 * j->K * elem;
    for (long b = 0; b < j->B; b++) {
      if (j->bf16) dot_rows_bf16(j->xf + b * j->K, wb, j->K, rows, out);
      else dot_rows_f32(j->xf + b * j->K, wb, j->K, rows, out);
      for (int r = 0; r < rows; r++) {
        if (j->bf16) ((uint16_t *)j->y)[b * j->N + n0 + r] = to_bf16(out[r]);
        else ((float *)j->y)[b * j->N + n0 + r] = out[r];
      }
    }
  }
}

/* The current job's number sits in the high half of `claim`, its next free block in the
   low half: a thread holding a finished job's copy can never claim blocks of a new one. */
static uint64_t claim;
static long done_blocks;

static void work(const job_t *j, uint32_t seq) {
  long blocks = (j->N + ROWS - 1) / ROWS;
  uint64_t c = __atomic_load_n(&claim, __ATOMIC_ACQUIRE);
  for (;;) {
    if ((uint32_t)(c >> 32) != seq || (long)(uint32_t)c >= blocks) return;
    if (!__atomic_compare_exchange_n(&claim, &c, c + CHUNK, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      continue;  /* c now holds the newer value: look again */
    long first = (long)(uint32_t)c, last = first + CHUNK < blocks ? first + CHUNK : blocks;
    do_blocks(j, first, last);
    __atomic_fetch_add(&done_blocks, last - first, __ATOMIC_RELEASE);
    c = __atomic_load_n(&claim, __ATOMIC_ACQUIRE);
  }
}

/* ---- helper threads: spin a little after each job, then sleep until the next ---- */

#define MAX_HELPERS 63
#define SPINS 4000  /* pause instructions (~50-100 us) before a helper sleeps */

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;  /* one product at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;       /* guards job, seq */
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static job_t job;
static uint32_t seq;
static int started;

static void *helper_main(void *arg) {
  int index = (int)(long)arg;
  uint32_t seen = 0;
  for (;;) {
    for (int i = 0; i < SPINS && __atomic_load_n(&seq, __ATOMIC_ACQUIRE) == seen; i++) _mm_pause();
    pthread_mutex_lock(&mu);
    while (seq == seen) pthread_cond_wait(&cv, &mu);
    job_t j = job;
    seen = seq;
    pthread_mutex_unlock(&mu);
    if (index < j.helpers) work(&j, seen);
  }
  return NULL;
}

static void lock_all(void) { pthread_mutex_lock(&call_mu); pthread_mutex_lock(&mu); }
static void unlock_all(void) { pthread_mutex_unlock(&mu); pthread_mutex_unlock(&call_mu); }
static void forget_helpers(void) {  /* in a forked child: no helpers, fresh locks */
  unlock_all();
  pthread_mutex_init(&call_mu, NULL);
  pthread_mutex_init(&mu, NULL);
  pthread_cond_init(&cv, NULL);
  started = 0;
}

/* y (B, N) = xf (B, K) @ w (N, K)^T on the calling thread and up to threads - 1 helpers.
   w is fp32 (bf16 == 0) or bf16, y has w's dtype, xf is fp32. The caller waits only for
   blocks a helper has claimed: a helper the OS has not run yet finds no work left. */
int herd_gemv(const float *xf, const void *w, void *y, long B, long N, long K, int bf16, int threads) {
  long blocks = (N + ROWS - 1) / ROWS;
  job_t j = {xf, w, y, B, N, K, bf16, threads - 1 < MAX_HELPERS ? threads - 1 : MAX_HELPERS};
  if (j.helpers <= 0) { do_blocks(&j, 0, blocks); return 0; }
  pthread_mutex_lock(&call_mu);
  pthread_mutex_lock(&mu);
  if (started == 0) pthread_atfork(lock_all, unlock_all, forget_helpers);
  for (; started < j.helpers; started++) {
    pthread_t t;
    if (pthread_create(&t, NULL, helper_main, (void *)(long)started) != 0) break;
    pthread_detach(t);
  }
  if (j.helpers > started) j.helpers = started;
  job = j;
  uint32_t s = seq + 1;
  __atomic_store_n(&seq, s, __ATOMIC_RELEASE);
  __atomic_store_n(&done_blocks, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&claim, (uint64_t)s << 32, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  work(&j, s);
  for (int i = 0; __atomic_load_n(&done_blocks, __ATOMIC_ACQUIRE) < blocks; i++) {
    if (i < SPINS) _mm_pause(); else sched_yield();  /* a helper is finishing its last chunk */
  }
  pthread_mutex_unlock(&call_mu);
  return 0;
}
"""

_FLAGS = ["-O3", "-mavx2", "-mfma", "-pthread", "-shared", "-fPIC"]


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
    lib = ctypes.CDLL(str(lib_path))  # ctypes releases the GIL for the length of each call
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


def _gemv_eager(x: Tensor, weight: Tensor) -> Tensor:
    """The product on the calling thread and ``torch.get_num_threads() - 1`` helper threads
    of the kernel's own (small weights: the calling thread alone)."""
    n, k = weight.shape
    xf = x.reshape(-1, k).float().contiguous()
    y = torch.empty(xf.shape[0], n, dtype=x.dtype)
    big = weight.numel() * weight.element_size() >= PARALLEL_BYTES
    _library().herd_gemv(xf.data_ptr(), weight.data_ptr(), y.data_ptr(), xf.shape[0], n, k,
                         int(x.dtype == torch.bfloat16), torch.get_num_threads() if big else 1)
    return y.view(*x.shape[:-1], n)


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
        x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
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
