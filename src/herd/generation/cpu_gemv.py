"""Matrix products for inference on x86 CPUs, and the Linear that uses them.

Decoding one token per row reads every weight once per step, so its speed is the memory
bandwidth the linear layers achieve. On the 2-core AMD EPYC (AVX2, no AVX-512) machines
herd is developed on, ``F.linear`` with one row reaches about 16 GB/s: MKL's sgemv and
ATen's bf16 gemv read about what one core can pull, with one thread or two, and ATen's
OpenMP gemv falls to a few GB/s when another process wants a core. A plain AVX2 loop
that streams eight weight rows at once against the input vector, on every core, reaches
25-35 GB/s there. Rows of 4 KiB or less (a 2048-wide bf16 or int8 weight) end before the
hardware prefetcher has ramped up, so the loop prefetches the next block's rows itself:
an int8 128256 x 2048 product went from 12.5-14 to 20-22 GB/s with it, a bf16 one from
20-21 to 23-24 (medians of 4 interleaved rounds, 2026-11-23).

With more rows (a batch of decodes in the engine, a prefill) the product is bound by
arithmetic, and there ``F.linear`` is worse still: 5-15 GFLOP/s in bf16 and 8-35 in fp32
for 8-2048 rows on those machines (MKL's and oneDNN's AVX2 paths on an AMD CPU), against
the two cores' ~185 GFLOP/s of fp32 FMA (measured: 12 chains of FMAs, no loads). A
register-tiled loop (3 input rows x 4 weight
rows of fp32 accumulators, each weight vector widened once and used three times, a block
of weight rows kept in cache for every input row) reaches 90-120 GFLOP/s there.

This module builds both loops (C, once, with the system C compiler; the .so is cached)
and swaps them into ``nn.Linear`` for the products they handle: CPU, fp32 or bf16, a
contiguous weight, no gradient, any number of rows. Everything else (training, CUDA,
fp16) goes to ``F.linear`` as before. The same loops read int8 weights with one fp32
scale per row (``herd.quant``'s int8 weight-only layers): a weight is widened to fp32
exactly, the row's scale multiplies the fp32 sum, so int8 decoding reads half of bf16's
bytes at the same bandwidth, where ATen's ``_weight_int8pack_mm`` reads them more slowly
than the bf16 gemv reads twice as many. The kernel runs on torch's OpenMP threads
(``ThreadChoice`` falls back to one thread while another process makes two slower; the
tiled loop hands out its blocks dynamically for the same reason).

Results equal ``F.linear``'s up to the order of the fp32 additions (the kernel
accumulates in fp32, as MKL and ATen do, and rounds bf16 outputs to nearest-even). Both
loops sum each output in the same order, so a row's result does not depend on which
other rows share the call: a request batched with others gets the bits it gets alone.
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

PARALLEL_BYTES = 1 << 20  # smaller products (weight bytes x rows) run on the calling thread alone

_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 8
#define SHORT_ROW 4096  /* bytes: rows this short are prefetched a block ahead */
enum { W_F32 = 0, W_BF16 = 1, W_INT8 = 2 };  /* the weight's element type */

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
/* eight weights from element i on, widened to fp32 (exactly: bf16 and int8 are subsets of fp32) */
static inline __m256 load8_f32(const void *p, long i) { return _mm256_loadu_ps((const float *)p + i); }
static inline __m256 load8_bf16(const void *p, long i) {
  __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline __m256 load8_int8(const void *p, long i) {
  __m128i b = _mm_loadl_epi64((const __m128i *)((const int8_t *)p + i));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}
static inline float get_f32(const void *p, long i) { return ((const float *)p)[i]; }
static inline float get_bf16(const void *p, long i) {
  uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline float get_int8(const void *p, long i) { return (float)((const int8_t *)p)[i]; }
static inline uint16_t to_bf16(float f) {  /* round to nearest even; NaN stays NaN */
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* out[r] = dot(x, w[r]) for `rows` consecutive weight rows of length K. With `ahead`, each
   cache line of a row is fetched ahead from the same place `ahead` bytes on (the next
   block's row): rows of a few KiB end before the hardware prefetcher has ramped up. */
#define DOT_ROWS(NAME, LOAD8, GET, ELEM)                                            \
static void NAME(const float *x, const void *w, long K, int rows, float *out, long ahead) { \
  __m256 acc[ROWS];                                                                 \
  for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();                      \
  long k = 0;                                                                       \
  if (rows == ROWS) {                                                               \
    for (; k + 8 <= K; k += 8) {                                                    \
      __m256 xv = _mm256_loadu_ps(x + k);                                           \
      if (ahead && (k * ELEM) % 64 == 0)                                            \
        for (int r = 0; r < ROWS; r++)                                              \
          _mm_prefetch((const char *)w + (r * K + k) * ELEM + ahead, _MM_HINT_T0);  \
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
DOT_ROWS(dot_rows_f32, load8_f32, get_f32, 4)
DOT_ROWS(dot_rows_bf16, load8_bf16, get_bf16, 2)
DOT_ROWS(dot_rows_int8, load8_int8, get_int8, 1)

static void dot_rows(int wtype, const float *x, const void *w, long K, int rows, float *out, long ahead) {
  if (wtype == W_BF16) dot_rows_bf16(x, w, K, rows, out, ahead);
  else if (wtype == W_INT8) dot_rows_int8(x, w, K, rows, out, ahead);
  else dot_rows_f32(x, w, K, rows, out, ahead);
}

/* Several input rows at once: an MR x NR tile of outputs (MR rows of x against NR rows of
   w) accumulates in 12 registers, so each weight vector loaded (and widened) feeds MR
   fused multiply-adds instead of one. Each output is summed in the same order as
   dot_rows sums it (8 lanes over k, then hsum, then the scalar tail), so the two paths give
   bit-identical results and either may take any product. */
#define NR 4
#define CHUNK 128
#define TILE(NAME, MR, LOAD8, GET)                                                  \
static void NAME(const float *x, long K, const void *w, float *out) {               \
  __m256 acc[MR][NR];                                                               \
  for (int i = 0; i < MR; i++)                                                      \
    for (int j = 0; j < NR; j++) acc[i][j] = _mm256_setzero_ps();                   \
  long k = 0;                                                                       \
  for (; k + 8 <= K; k += 8) {                                                      \
    __m256 xv[MR];                                                                  \
    _Pragma("GCC unroll 8")                                                         \
    for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + i * K + k);            \
    _Pragma("GCC unroll 8")                                                         \
    for (int j = 0; j < NR; j++) {                                                  \
      __m256 wv = LOAD8(w, j * K + k);                                              \
      _Pragma("GCC unroll 8")                                                       \
      for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(wv, xv[i], acc[i][j]); \
    }                                                                               \
  }                                                                                 \
  for (int i = 0; i < MR; i++)                                                      \
    for (int j = 0; j < NR; j++) {                                                  \
      float s = hsum(acc[i][j]);                                                    \
      for (long t = k; t < K; t++) s += x[i * K + t] * GET(w, j * K + t);           \
      out[i * NR + j] = s;                                                          \
    }                                                                               \
}
#define TILES(T, LOAD8, GET) \
  TILE(tile3_##T, 3, LOAD8, GET) TILE(tile2_##T, 2, LOAD8, GET) TILE(tile1_##T, 1, LOAD8, GET)
TILES(f32, load8_f32, get_f32)
TILES(bf16, load8_bf16, get_bf16)
TILES(int8, load8_int8, get_int8)

static void tile(int wtype, int mr, const float *x, long K, const void *w, float *out) {
  if (wtype == W_BF16) { if (mr == 3) tile3_bf16(x, K, w, out); else if (mr == 2) tile2_bf16(x, K, w, out);
                         else tile1_bf16(x, K, w, out); }
  else if (wtype == W_INT8) { if (mr == 3) tile3_int8(x, K, w, out); else if (mr == 2) tile2_int8(x, K, w, out);
                              else tile1_int8(x, K, w, out); }
  else { if (mr == 3) tile3_f32(x, K, w, out); else if (mr == 2) tile2_f32(x, K, w, out);
         else tile1_f32(x, K, w, out); }
}

/* What turns a sum into an output: int8 weights multiply it by their row's scale; int4
   weights subtract their zero points' share, sum over groups g of offset[n][g] * xsum[b][g]
   (offset = (zero_point + 8) * scale, xsum = the input row's sum over the group). */
typedef struct {
  const float *row_scale;               /* int8: [N] */
  const float *offset, *xsum; long groups;  /* int4: [N, groups], [B, groups] */
} Epilogue;

/* y[b, n] = v after the epilogue, in y's dtype */
static inline void store(void *y, long b, long n, long N, float v, int ybf16, const Epilogue *e) {
  if (e->row_scale) v *= e->row_scale[n];
  if (e->offset) {
    float c = 0.0f;
    for (long g = 0; g < e->groups; g++) c += e->offset[n * e->groups + g] * e->xsum[b * e->groups + g];
    v -= c;
  }
  if (ybf16) ((uint16_t *)y)[b * N + n] = to_bf16(v);
  else ((float *)y)[b * N + n] = v;
}

/* Rows [n0, n0 + rows) of the output for every input row (wb: weight row n0): NR-row
   weight tiles against 3 input rows at a time (2 + 2 for the last 4) (the tile's weights stay in cache across the
   input rows), the last rows % NR weight rows by dot_rows. */
static void block_tiled(const float *xf, const void *wb, int wtype, size_t elem, const Epilogue *e, void *y,
                        int ybf16, long B, long N, long K, long n0, long rows) {
  long full = rows - rows % NR;
  float out[3 * NR];
  for (long b = 0, mr; b < B; b += mr) {
    mr = B - b == 4 ? 2 : B - b < 3 ? B - b : 3;  /* 4 rows left: 2 + 2, not 3 + a lone row */
    const float *xb = xf + b * K;
    for (long n = n0; n < n0 + full; n += NR) {
      tile(wtype, mr, xb, K, (const char *)wb + (size_t)(n - n0) * K * elem, out);
      for (int i = 0; i < mr; i++)
        for (int j = 0; j < NR; j++) store(y, b + i, n + j, N, out[i * NR + j], ybf16, e);
    }
    long n = n0 + full;
    if (n < n0 + rows) {
      const void *wn = (const char *)wb + (size_t)(n - n0) * K * elem;
      for (int i = 0; i < mr; i++) {
        dot_rows(wtype, xb + i * K, wn, K, (int)(n0 + rows - n), out, 0);
        for (long r = 0; r < n0 + rows - n; r++) store(y, b + i, n + r, N, out[r], ybf16, e);
      }
    }
  }
}

/* y (B, N) = x (B, K) @ w (N, K)^T [* scale (N)], on `threads` OpenMP threads (torch's own
   team). x and y are fp32 (xbf16 == 0) or bf16; w is fp32, bf16 or int8 (wtype), int8 with
   one fp32 scale per row applied to the fp32 sum. One input row streams ROWS weight rows at
   a time, the rows of w split evenly over the threads (a memory-bound pass). More rows go
   through the tiles (compute-bound), in blocks of as many weight rows as fit in about
   128 KiB of cache, each block read from memory once for all input rows. Returns 1 when out
   of memory. */
int herd_gemv(const void *x, int xbf16, const void *w, int wtype, const float *scale, void *y,
              long B, long N, long K, int threads) {
  size_t elem = wtype == W_F32 ? 4 : wtype == W_BF16 ? 2 : 1;
  float *xf = (float *)x, *buffer = NULL;
  if (xbf16) {  /* the input rows in fp32, once per call */
    xf = buffer = (float *)malloc(sizeof(float) * B * K);
    if (!buffer) return 1;
    for (long i = 0; i < B * K; i++) xf[i] = get_bf16(x, i);
  }
  size_t yelem = xbf16 ? 2 : 4;
  Epilogue e = {scale, NULL, NULL, 0};
  long blocks;
  if (B >= 2) {
    long block = ((128L << 10) / (K * (long)elem)) / NR * NR;
    long most = (N / (8L * threads)) / NR * NR;  /* at least 8 blocks a thread */
    if (block > most) block = most;
    if (block < NR) block = NR;
    blocks = (N + block - 1) / block;
    for (long b0 = 0; b0 < B; b0 += CHUNK) {  /* CHUNK input rows stay in cache for all blocks */
      long rows = B - b0 < CHUNK ? B - b0 : CHUNK;
      const float *xc = xf + b0 * K;
      void *yc = (char *)y + (size_t)b0 * N * yelem;
      /* dynamic: when another process holds up one thread, the others take its share */
      #pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
      for (long blk = 0; blk < blocks; blk++) {
        long n0 = blk * block;
        block_tiled(xc, (const char *)w + (size_t)n0 * K * elem, wtype, elem, &e, yc, xbf16, rows, N, K, n0,
                    N - n0 < block ? N - n0 : block);
      }
    }
    free(buffer);
    return 0;
  }
  blocks = (N + ROWS - 1) / ROWS;
  long ahead = K * (long)elem <= SHORT_ROW ? ROWS * K * (long)elem : 0;
  #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (long blk = 0; blk < blocks; blk++) {
    long n0 = blk * ROWS;
    int rows = (int)(N - n0 < ROWS ? N - n0 : ROWS);
    float out[ROWS];
    dot_rows(wtype, xf, (const char *)w + (size_t)n0 * K * elem, K, rows, out, blk + 1 < blocks ? ahead : 0);
    for (int r = 0; r < rows; r++) store(y, 0, n0 + r, N, out[r], xbf16, &e);
  }
  free(buffer);
  return 0;
}

/* ---- int4 weights, group-wise: uint8 [N, K/2] of u = q + 8 (even column in the low
   nibble), fp32 scale [N, K/G]; w = (q - zero_point) * scale = u * scale - offset with
   offset = (zero_point + 8) * scale. A 16-column chunk's byte i holds columns 2i and 2i+1,
   so the input row is read permuted (xp: per chunk the 8 even columns, then the 8 odd):
   lane i of a chunk's low half pairs u_lo[i] with x[2i], of its high half u_hi[i] with
   x[2i+1]. Each group's sum of x * u (the integers widen exactly) is scaled once, by a
   fused multiply-add into the row's accumulator: a group of G weights costs G/8 FMAs and
   one more, where scaling every weight cost G/8 multiplies as well (the loop is bound by
   arithmetic, not by its 0.5 byte a weight). The zero points' share is subtracted once, in
   the epilogue. Batched products widen a block of weight rows (u as fp32) into a
   cache-sized buffer laid out like xp and run grouped fp32 tiles over it: the same sums
   in the same order as the one-row loop, so int4 rows are batch-invariant too. */
static inline void unpack16_int4(const uint8_t *p, __m256 *lo, __m256 *hi) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
  *lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  *hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}

/* out[r] = sum over groups g of scale[r][g] * (sum over k in g of xp * u), for `rows`
   (<= ROWS) consecutive weight rows */
static void dot_rows_int4(const float *xp, const uint8_t *w, const float *scale, long K, long G, int rows,
                          float *out) {
  long groups = K / G, half = K / 2;
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
  for (long g = 0; g < groups; g++) {
    __m256 part[ROWS];
    for (int r = 0; r < ROWS; r++) part[r] = _mm256_setzero_ps();
    for (long k = g * G; k < (g + 1) * G; k += 16) {
      __m256 xe = _mm256_loadu_ps(xp + k), xo = _mm256_loadu_ps(xp + k + 8);
      if (rows == ROWS) {
        _Pragma("GCC unroll 8")
        for (int r = 0; r < ROWS; r++) {
          __m256 lo, hi;
          unpack16_int4(w + r * half + k / 2, &lo, &hi);
          part[r] = _mm256_fmadd_ps(lo, xe, part[r]);
          part[r] = _mm256_fmadd_ps(hi, xo, part[r]);
        }
      } else {
        for (int r = 0; r < rows; r++) {
          __m256 lo, hi;
          unpack16_int4(w + r * half + k / 2, &lo, &hi);
          part[r] = _mm256_fmadd_ps(lo, xe, part[r]);
          part[r] = _mm256_fmadd_ps(hi, xo, part[r]);
        }
      }
    }
    for (int r = 0; r < rows; r++)
      acc[r] = _mm256_fmadd_ps(part[r], _mm256_broadcast_ss(scale + r * groups + g), acc[r]);
  }
  for (int r = 0; r < rows; r++) out[r] = hsum(acc[r]);
}

/* rows [n0, n0 + rows) of the weight as fp32 u, in xp's permuted column order */
static void widen_int4_rows(const uint8_t *w, long K, long n0, long rows, float *dst) {
  long half = K / 2;
  for (long r = 0; r < rows; r++)
    for (long k = 0; k < K; k += 16) {
      __m256 lo, hi;
      unpack16_int4(w + (n0 + r) * half + k / 2, &lo, &hi);
      _mm256_storeu_ps(dst + r * K + k, lo);
      _mm256_storeu_ps(dst + r * K + k + 8, hi);
    }
}

/* MR input rows x NC widened weight rows (u, fp32), each group's sums scaled into the
   accumulators as dot_rows_int4 scales them (the same FMAs per lane, in the same order) */
#define GTILE(NAME, MR, NC)                                                         \
static void NAME(const float *x, long K, long G, const float *w, const float *scale, long groups, float *out) { \
  __m256 acc[MR][NC];                                                               \
  for (int i = 0; i < MR; i++)                                                      \
    for (int j = 0; j < NC; j++) acc[i][j] = _mm256_setzero_ps();                   \
  for (long g = 0; g < groups; g++) {                                               \
    __m256 part[MR][NC];                                                            \
    for (int i = 0; i < MR; i++)                                                    \
      for (int j = 0; j < NC; j++) part[i][j] = _mm256_setzero_ps();                \
    for (long k = g * G; k < (g + 1) * G; k += 8) {                                 \
      __m256 xv[MR];                                                                \
      _Pragma("GCC unroll 8")                                                       \
      for (int i = 0; i < MR; i++) xv[i] = _mm256_loadu_ps(x + i * K + k);          \
      _Pragma("GCC unroll 8")                                                       \
      for (int j = 0; j < NC; j++) {                                                \
        __m256 wv = _mm256_loadu_ps(w + j * K + k);                                 \
        _Pragma("GCC unroll 8")                                                     \
        for (int i = 0; i < MR; i++) part[i][j] = _mm256_fmadd_ps(wv, xv[i], part[i][j]); \
      }                                                                             \
    }                                                                               \
    for (int j = 0; j < NC; j++) {                                                  \
      __m256 s = _mm256_broadcast_ss(scale + j * groups + g);                       \
      for (int i = 0; i < MR; i++) acc[i][j] = _mm256_fmadd_ps(part[i][j], s, acc[i][j]); \
    }                                                                               \
  }                                                                                 \
  for (int i = 0; i < MR; i++)                                                      \
    for (int j = 0; j < NC; j++) out[i * NC + j] = hsum(acc[i][j]);                 \
}
GTILE(gtile3, 3, NR) GTILE(gtile2, 2, NR) GTILE(gtile1, 1, NR) GTILE(gtile_one, 1, 1)

/* block_tiled for widened int4 rows [n0, n0 + rows) (wb: their u, scale: all rows') */
static void block_tiled_int4(const float *xf, const float *wb, const float *scale, long G, const Epilogue *e,
                             void *y, int ybf16, long B, long N, long K, long n0, long rows) {
  long full = rows - rows % NR, groups = K / G;
  float out[3 * NR];
  for (long b = 0, mr; b < B; b += mr) {
    mr = B - b == 4 ? 2 : B - b < 3 ? B - b : 3;
    const float *xb = xf + b * K;
    for (long n = n0; n < n0 + rows; n += n < n0 + full ? NR : 1) {
      const float *wn = wb + (n - n0) * K, *sn = scale + n * groups;
      int nc = n < n0 + full ? NR : 1;
      if (nc == 1) for (int i = 0; i < mr; i++) gtile_one(xb + i * K, K, G, wn, sn, groups, out + i);
      else if (mr == 3) gtile3(xb, K, G, wn, sn, groups, out);
      else if (mr == 2) gtile2(xb, K, G, wn, sn, groups, out);
      else gtile1(xb, K, G, wn, sn, groups, out);
      for (int i = 0; i < mr; i++)
        for (int j = 0; j < nc; j++) store(y, b + i, n + j, N, out[i * nc + j], ybf16, e);
    }
  }
}

/* y (B, N) = x (B, K) @ dequantized(w)^T for int4 weights (see above); K a multiple of G,
   G a multiple of 16. Returns 1 when out of memory. */
int herd_gemv_int4(const void *x, int xbf16, const uint8_t *w, const float *scale, const float *offset,
                   long G, void *y, long B, long N, long K, int threads) {
  long groups = K / G;
  float *xp = (float *)malloc(sizeof(float) * B * K), *xsum = (float *)malloc(sizeof(float) * B * groups);
  if (!xp || !xsum) { free(xp); free(xsum); return 1; }
  for (long b = 0; b < B; b++) {
    for (long g = 0; g < groups; g++) {
      float s = 0.0f;
      for (long k = g * G; k < (g + 1) * G; k++) s += xbf16 ? get_bf16(x, b * K + k) : get_f32(x, b * K + k);
      xsum[b * groups + g] = s;
    }
    for (long k = 0; k < K; k += 16)
      for (int i = 0; i < 8; i++) {
        long even = b * K + k + 2 * i;
        xp[b * K + k + i] = xbf16 ? get_bf16(x, even) : get_f32(x, even);
        xp[b * K + k + 8 + i] = xbf16 ? get_bf16(x, even + 1) : get_f32(x, even + 1);
      }
  }
  Epilogue e = {NULL, offset, xsum, groups};
  int failed = 0;
  if (B >= 2) {
    long block = ((128L << 10) / (K * 4L)) / NR * NR;
    long most = (N / (8L * threads)) / NR * NR;
    if (block > most) block = most;
    if (block < NR) block = NR;
    long blocks = (N + block - 1) / block;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
      float *buf = (float *)malloc(sizeof(float) * block * K);
      if (!buf) {
        #pragma omp atomic write
        failed = 1;
      }
      #pragma omp for schedule(dynamic)
      for (long blk = 0; blk < blocks; blk++) {
        if (!buf) continue;
        long n0 = blk * block, rows = N - n0 < block ? N - n0 : block;
        widen_int4_rows(w, K, n0, rows, buf);
        for (long b0 = 0; b0 < B; b0 += CHUNK) {  /* the widened block serves every input row */
          Epilogue eb = {NULL, offset, xsum + b0 * groups, groups};
          block_tiled_int4(xp + b0 * K, buf, scale, G, &eb, (char *)y + (size_t)b0 * N * (xbf16 ? 2 : 4), xbf16,
                           B - b0 < CHUNK ? B - b0 : CHUNK, N, K, n0, rows);
        }
      }
      free(buf);
    }
  } else {
    long blocks = (N + ROWS - 1) / ROWS;
    #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (long blk = 0; blk < blocks; blk++) {
      long n0 = blk * ROWS;
      int rows = (int)(N - n0 < ROWS ? N - n0 : ROWS);
      float out[ROWS];
      dot_rows_int4(xp, w + n0 * (K / 2), scale + n0 * groups, K, G, rows, out);
      for (int r = 0; r < rows; r++) store(y, 0, n0 + r, N, out[r], xbf16, &e);
    }
  }
  free(xp);
  free(xsum);
  return failed;
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
    lib.herd_gemv.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_int]
    lib.herd_gemv.restype = ctypes.c_int
    lib.herd_gemv_int4.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_long] + [
        ctypes.c_void_p] + [ctypes.c_long] * 3 + [ctypes.c_int]
    lib.herd_gemv_int4.restype = ctypes.c_int
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


@torch.compiler.assume_constant_result  # a compiled forward asks too: traced as a constant
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
_XTYPE = {torch.float32: 0, torch.bfloat16: 1}  # activations (and outputs): is it bf16?
_WTYPE = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # the kernel's weight element types


def _run(kernel, x: Tensor, n: int, k: int, weight_bytes: int, tag: int, *args) -> Tensor:  # noqa: ANN001
    """``kernel(x, xtype, *args, y, rows, n, k, ..., threads)`` into a new y (x's rows, n
    columns), on the thread count ``_threads`` picks for this shape; ``tag`` tells weight
    types apart in its records."""
    x = x if x.is_contiguous() else x.contiguous()
    y = x.new_empty((*x.shape[:-1], n))
    rows = x.numel() // k
    # the work: one row reads every weight once, r rows do r times the arithmetic on them
    work = weight_bytes * rows
    shape = (n, k, tag, min(rows, 2))  # memory- and compute-bound keep separate records
    threads = _threads.pick(shape, torch.get_num_threads()) if work >= PARALLEL_BYTES else 1
    start = time.perf_counter()
    if kernel(x.data_ptr(), _XTYPE[x.dtype], *args, y.data_ptr(), rows, n, k, threads):
        raise MemoryError(f"{kernel.__name__}: no memory for its buffers")
    if threads > 1 or work >= PARALLEL_BYTES:
        _threads.record(shape, threads, work, time.perf_counter() - start)
    return y


def _gemv_eager(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> Tensor:
    n, k = weight.shape
    return _run(_library().herd_gemv, x, n, k, weight.numel() * weight.element_size(), weight.element_size(),
                weight.data_ptr(), _WTYPE[weight.dtype], None if scale is None else scale.data_ptr())


@torch.library.custom_op("herd::cpu_gemv", mutates_args=())
def cpu_gemv(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> Tensor:
    """``x @ weight.T`` (CPU; x fp32 or bf16; weight contiguous, x's dtype or int8). An int8
    weight needs ``scale``, fp32 [out]: the product is ``(x @ weight.T) * scale``, summed in
    fp32 and rounded to x's dtype once."""
    if (weight.dtype is torch.int8) != (scale is not None):
        raise ValueError("cpu_gemv: an int8 weight needs its fp32 per-row scale, and only an int8 weight takes one")
    if scale is not None and (scale.dtype is not torch.float32 or scale.numel() != weight.shape[0]
                              or not scale.is_contiguous()):
        raise ValueError(f"cpu_gemv: scale must be a contiguous fp32 tensor of {weight.shape[0]} values, "
                         f"got {scale.dtype} {tuple(scale.shape)}")
    return _gemv_eager(x, weight, scale)


@cpu_gemv.register_fake
def _(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _gemv_int4_eager(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group_size: int) -> Tensor:
    n, half = packed.shape
    return _run(_library().herd_gemv_int4, x, n, 2 * half, packed.numel(), 0,  # tag 0: int4
                packed.data_ptr(), scale.data_ptr(), offset.data_ptr(), group_size)


@torch.library.custom_op("herd::cpu_gemv_int4", mutates_args=())
def cpu_gemv_int4(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group_size: int) -> Tensor:
    """``x @ w.T`` for a group-wise int4 weight ``w = (q - zero_point) * scale`` (CPU; x fp32
    or bf16): ``packed`` uint8 [out, in/2] holds ``q + 8``, the even column in the low
    nibble; ``scale`` and ``offset = (zero_point + 8) * scale`` are fp32 [out, in/group_size];
    group_size a multiple of 16 dividing in."""
    n, half = packed.shape
    k, groups = 2 * half, (2 * half) // max(group_size, 1)
    if packed.dtype is not torch.uint8 or not packed.is_contiguous():
        raise ValueError(f"cpu_gemv_int4: packed must be contiguous uint8, got {packed.dtype}")
    if group_size <= 0 or group_size % 16 or k % group_size:
        raise ValueError(f"cpu_gemv_int4: group_size {group_size} must be a multiple of 16 dividing {k}")
    if x.shape[-1] != k:
        raise ValueError(f"cpu_gemv_int4: x has {x.shape[-1]} features, the weight {k}")
    for name, t in (("scale", scale), ("offset", offset)):
        if t.dtype is not torch.float32 or tuple(t.shape) != (n, groups) or not t.is_contiguous():
            raise ValueError(f"cpu_gemv_int4: {name} must be contiguous fp32 {(n, groups)}, got {t.dtype} "
                             f"{tuple(t.shape)}")
    return _gemv_int4_eager(x, packed, scale, offset, group_size)


@cpu_gemv_int4.register_fake
def _(x: Tensor, packed: Tensor, scale: Tensor, offset: Tensor, group_size: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], packed.shape[0])


def handles(x: Tensor, weight: Tensor) -> bool:
    """Whether ``cpu_gemv`` takes this product (else ``F.linear`` does, or for int8 weights
    ATen's int8 kernel)."""
    return (
        x.is_cpu
        and x.dtype in _XTYPE
        and (x.dtype is weight.dtype or weight.dtype is torch.int8)
        and weight.is_cpu
        and x.numel() > 0
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class GemvLinear(nn.Linear):
    """An ``nn.Linear`` whose CPU inference products run on herd's kernel."""

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
