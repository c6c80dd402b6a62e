// Packed multi-head attention with dropout on the probabilities, forward and backward, in bf16 with
// AVX-512 BF16 dot products (vdpbf16ps) and in fp32 with AVX-512 multiply-adds:
// contrastkit/fused_attention.py builds and loads this file.
//
// The file is built for AVX-512 F/BW/VL/DQ; the bf16 functions (marked BF16) alone use AVX-512 BF16
// instructions, compiled for them by a target attribute, and run only where the CPU has them (the
// Python side checks), so the one library serves both kinds of CPU.
//
// One task per (text, head): the text's q, k, v rows are read straight from the packed projection
// [n, 3D] (no padded per-head copies), its [L, L] scores stay in a per-thread scratch block that
// fits the core's cache (no [b, h, T, T] tensor), and the context goes straight into the packed rows
// [n, D]. The backward recomputes the
// probabilities from each row's max and 1 / sum (FlashAttention's recomputation, Dao et al. 2022) and
// redraws the dropout mask from the seed, so nothing of size [L, L] is kept between the passes.
//
// The dropout mask is FastDropout's (contrastkit/fast_dropout.py): element (t, h, i, j) of the
// padded [b, H, W, W] block has index e = ((t H + h) W + i) W + j and is kept when 16-bit lane e of
// the SplitMix64 stream from the seed is >= threshold, the mask softmax_kernels draws for the same
// seed and block.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "kernel_common.h"

#define BF16 __attribute__((target("avx512bf16")))

namespace {

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// lanes j .. j + 15 that are real keys (< L)
inline __mmask16 real_lanes(int L, int j) {
  return j + 16 <= L ? (__mmask16)0xFFFF : (__mmask16)((1u << (L > j ? L - j : 0)) - 1);
}

// C[M, N] = A B in fp32: A's row m holds K2 pairs of bf16 (uint32 A[m lda + k]), B's row k holds N
// pairs (uint32 B[k ldb + n], the two bf16 of the pair are consecutive values of the reduction index):
// C[m, n] = sum_k A[m, k].lo B[k, n].lo + A[m, k].hi B[k, n].hi. N a multiple of 16.
template <int MR, int NV>
BF16 inline void tile(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int K2) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int k = 0; k < K2; k++) {
    __m512i b[NV];
    for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_si512(B + (size_t)k * ldb + 16 * v);
    for (int r = 0; r < MR; r++) {
      const __m512i a = _mm512_set1_epi32((int)A[(size_t)r * lda + k]);
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)a, (__m512bh)b[v]);
    }
  }
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++) _mm512_storeu_ps(C + (size_t)r * ldc + 16 * v, acc[r][v]);
}

template <int NV>
BF16 void rows(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int M, int K2) {
  constexpr int MR = NV <= 2 ? 8 : 4;
  int m = 0;
  for (; m + MR <= M; m += MR) tile<MR, NV>(A + (size_t)m * lda, lda, B, ldb, C + (size_t)m * ldc, ldc, K2);
  for (; m + 2 <= M; m += 2) tile<2, NV>(A + (size_t)m * lda, lda, B, ldb, C + (size_t)m * ldc, ldc, K2);
  for (; m < M; m++) tile<1, NV>(A + (size_t)m * lda, lda, B, ldb, C + (size_t)m * ldc, ldc, K2);
}

BF16 void gemm(const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, int M, int N, int K2) {
  for (int n = 0; n < N; n += 64) {
    const int nv = (N - n) >= 64 ? 4 : (N - n) / 16;
    const uint32_t* b = B + n;
    float* c = C + n;
    switch (nv) {
      case 4: rows<4>(A, lda, b, ldb, c, ldc, M, K2); break;
      case 3: rows<3>(A, lda, b, ldb, c, ldc, M, K2); break;
      case 2: rows<2>(A, lda, b, ldb, c, ldc, M, K2); break;
      default: rows<1>(A, lda, b, ldb, c, ldc, M, K2); break;
    }
  }
}

// C[M, N] = A B in fp32, A(m, k) = A[m sm + k sk] (sm = lda, sk = 1: A by rows; sm = 1, sk = lda: the
// transpose of a block by rows), B's row k at B + k ldb. N a multiple of 16. Row m of C times
// row_scale[m] where given.
template <int MR, int NV>
inline void tile_f32(const float* A, int sm, int sk, const float* B, int ldb, float* C, int ldc, int K,
                     const float* row_scale) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; r++)
    for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int k = 0; k < K; k++) {
    __m512 b[NV];
    for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(B + (size_t)k * ldb + 16 * v);
    const float* a = A + (size_t)k * sk;
    for (int r = 0; r < MR; r++) {
      const __m512 x = _mm512_set1_ps(a[(size_t)r * sm]);
      for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; r++) {
    const __m512 f = _mm512_set1_ps(row_scale == nullptr ? 1.0f : row_scale[r]);
    for (int v = 0; v < NV; v++)
      _mm512_storeu_ps(C + (size_t)r * ldc + 16 * v, row_scale == nullptr ? acc[r][v] : _mm512_mul_ps(acc[r][v], f));
  }
}

// the last R < MR rows in one tile of R rows (a tile of 2 or 1 rows has too few independent
// multiply-add chains to keep both FMA units busy)
template <int NV, int R>
inline void last_rows(int rows, const float* A, int sm, int sk, const float* B, int ldb, float* C, int ldc, int K,
                      const float* row_scale) {
  if constexpr (R >= 1) {
    if (rows == R) tile_f32<R, NV>(A, sm, sk, B, ldb, C, ldc, K, row_scale);
    else last_rows<NV, R - 1>(rows, A, sm, sk, B, ldb, C, ldc, K, row_scale);
  }
}

// tiles of MR rows: 14 x 2 vectors for a head of 32 (28 accumulators: 150-190 GFLOP/s on one core of
// the Intel Xeon of 2026-11-29 at 20-128 tokens, against 125-147 for tiles of 8 x 2), 8 x 1 or 4 x 3-4
// otherwise
template <int NV>
void rows_f32(const float* A, int sm, int sk, const float* B, int ldb, float* C, int ldc, int M, int K,
              const float* row_scale) {
  constexpr int MR = NV == 2 ? 14 : NV == 1 ? 8 : 4;
  int m = 0;
  for (; m + MR <= M; m += MR)
    tile_f32<MR, NV>(A + (size_t)m * sm, sm, sk, B, ldb, C + (size_t)m * ldc, ldc, K,
                     row_scale == nullptr ? nullptr : row_scale + m);
  if (m < M)
    last_rows<NV, MR - 1>(M - m, A + (size_t)m * sm, sm, sk, B, ldb, C + (size_t)m * ldc, ldc, K,
                          row_scale == nullptr ? nullptr : row_scale + m);
}

void gemm_f32(const float* A, int sm, int sk, const float* B, int ldb, float* C, int ldc, int M, int N, int K,
              const float* row_scale = nullptr) {
  for (int n = 0; n < N; n += 64) {
    const int nv = (N - n) >= 64 ? 4 : (N - n) / 16;
    switch (nv) {
      case 4: rows_f32<4>(A, sm, sk, B + n, ldb, C + n, ldc, M, K, row_scale); break;
      case 3: rows_f32<3>(A, sm, sk, B + n, ldb, C + n, ldc, M, K, row_scale); break;
      case 2: rows_f32<2>(A, sm, sk, B + n, ldb, C + n, ldc, M, K, row_scale); break;
      default: rows_f32<1>(A, sm, sk, B + n, ldb, C + n, ldc, M, K, row_scale); break;
    }
  }
}

// r[0..15] (16 rows of 16 32-bit words) → their transpose, in place
inline void transpose16(__m512i* r) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; i++) {
      t[h + i] = _mm512_shuffle_i32x4(u[h + i], u[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_i32x4(u[h + i], u[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// out[c][j] = x[j][c] for j < rows (0 for rows <= j < rows_out, a multiple of 16), c < cols (a multiple
// of 16): a transpose of 32-bit words, row strides ld and ld_out words
void transpose_words(const uint32_t* x, int ld, int rows, int rows_out, int cols, uint32_t* out, int ld_out) {
  __m512i r[16];
  for (int j = 0; j < rows_out; j += 16)
    for (int c = 0; c < cols; c += 16) {
      for (int i = 0; i < 16; i++)
        r[i] = j + i < rows ? _mm512_loadu_si512(x + (size_t)(j + i) * ld + c) : _mm512_setzero_si512();
      transpose16(r);
      for (int i = 0; i < 16; i++) _mm512_storeu_si512(out + (size_t)(c + i) * ld_out + j, r[i]);
    }
}

// out[c][j] = the pair (x[j][2c], x[j][2c + 1]) for j < L (0 for L <= j < Lp), c < d / 2: a [L, d] bf16
// block (row stride ld elements) as the B operand of a product over its columns
inline void column_pairs(const uint16_t* x, int ld, int L, int Lp, int d, uint32_t* out) {
  transpose_words((const uint32_t*)x, ld / 2, L, Lp, d / 2, out, Lp);
}

// 16 pairs (lo[c], hi[c]) as 32-bit words
inline __m512i pair_words(const uint16_t* lo, const uint16_t* hi) {
  const __m512i low = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)lo));
  if (hi == nullptr) return low;
  return _mm512_or_si512(low, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)hi)), 16));
}

// out[m][c] = the pair (x[2m][c], x[2m + 1][c]) (a row >= L reads 0), m < K2: a [L, d] bf16 block as
// the B operand of a product over its rows (row stride ld_out words)
void row_pairs(const uint16_t* x, int ld, int L, int K2, int d, uint32_t* out, int ld_out) {
  for (int m = 0; m < K2; m++) {
    uint32_t* o = out + (size_t)m * ld_out;
    if (2 * m >= L) {
      memset(o, 0, (size_t)d * 4);
      continue;
    }
    const uint16_t* lo = x + (size_t)(2 * m) * ld;
    const uint16_t* hi = 2 * m + 1 < L ? lo + ld : nullptr;
    for (int c = 0; c < d; c += 16) _mm512_storeu_si512(o + c, pair_words(lo + c, hi == nullptr ? nullptr : hi + c));
  }
}

// out[c][m] = the pair (x[2m][c], x[2m + 1][c]) for c < d, m < R2 (row stride R16 = R2 rounded up to 16;
// a row >= L reads 0): the transpose of a [L, d] bf16 block as the A operand of a product over its rows
void transposed_pairs(const uint16_t* x, int ld, int L, int R2, int d, uint32_t* pairs, uint32_t* out) {
  row_pairs(x, ld, L, R2, d, pairs, d);
  transpose_words(pairs, d, R2, round_up(R2, 16), d, out, round_up(R2, 16));
}

// x [d, ld] fp32 → rows j < L of out (row stride ld_out), columns c < d: out[j][c] = bf16(x[c][j])
BF16 void store_transposed(const float* x, int ld, int L, int d, uint16_t* out, int ld_out) {
  __m512i r[16];
  for (int j = 0; j < L; j += 16)
    for (int c = 0; c < d; c += 16) {
      for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_si512(x + (size_t)(c + i) * ld + j);
      transpose16(r);
      for (int i = 0; i < 16 && j + i < L; i++)
        _mm256_storeu_si256((__m256i*)(out + (size_t)(j + i) * ld_out + c),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(r[i])));
    }
}

// 16 bf16 values widened to fp32
inline __m512 widen(const uint16_t* x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)x)), 16));
}

// 16 fp32 values as they are (the fp32 twin of widen)
inline __m512 widen(const float* x) { return _mm512_loadu_ps(x); }

// Σ_c x[c] y[c] in fp32 for bf16 or fp32 x, y, c < n (a multiple of 16)
template <typename T>
inline float row_dot(const T* x, const T* y, int n) {
  __m512 sum = _mm512_setzero_ps();
  for (int c = 0; c < n; c += 16) sum = _mm512_fmadd_ps(widen(x + c), widen(y + c), sum);
  return _mm512_reduce_add_ps(sum);
}

// out[c] = bf16(factor x[c]), c < n (a multiple of 16)
BF16 void store_bf16(const float* x, int n, float factor, uint16_t* out) {
  const __m512 f = _mm512_set1_ps(factor);
  for (int c = 0; c < n; c += 16)
    _mm256_storeu_si256((__m256i*)(out + c), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(x + c), f)));
}

// a thread's buffers for one (text, head), grown to the largest text seen
struct Scratch {
  std::vector<float> s, g;           // [L, Lp] fp32: the scores; the dropped probabilities' gradient
  std::vector<uint32_t> a, b, c;     // bf16 blocks: probabilities or dS by rows; Y and dS in pairs of rows
  std::vector<uint32_t> kp, vp, rp;  // operands in pairs: [d / 2, Lp], [Lp / 2, d] or [d, R2 rounded to 16]
  std::vector<float> out;            // [L, d]
  std::vector<float> rows_a, rows_b, rows_c, rows_d;  // [L, d] fp32: a head's q, k, v or dout rows, gathered
  std::vector<float> factor;         // [L] each output row's scale
  std::vector<uint64_t> words;       // a row's dropout stream
  void fit(int Lp, int d) {
    const size_t block = (size_t)Lp * Lp, pairs = (size_t)Lp * d;
    if (s.size() < block) {
      s.resize(block); g.resize(block); a.resize(block); b.resize(block); c.resize(block);
    }
    if (kp.size() < pairs) {
      kp.resize(pairs); vp.resize(pairs); rp.resize(pairs); out.resize(pairs);
      rows_a.resize(pairs); rows_b.resize(pairs); rows_c.resize(pairs); rows_d.resize(pairs);
    }
    if (words.size() < (size_t)Lp / 4 + 24) words.resize(Lp / 4 + 24);
    if (factor.size() < (size_t)Lp) factor.resize(Lp);
  }
};

// keep bits of row i's first Lp keys: bit j of keep[j / 16] (all kept at threshold 0)
void keep_bits(Scratch& sc, uint64_t seed, uint16_t threshold, int64_t row_index, int Lp, uint16_t* keep) {
  const int groups = Lp / 16;
  if (threshold == 0) {
    for (int q = 0; q < groups; q++) keep[q] = 0xFFFF;
    return;
  }
  const uint64_t first = (uint64_t)row_index >> 2;
  const int offset = (int)(row_index & 3);
  splitmix_words(sc.words.data(), seed, first, (offset + Lp + 3) / 4);
  const uint16_t* lanes = (const uint16_t*)sc.words.data() + offset;
  const __m256i t = _mm256_set1_epi16((short)threshold);
  for (int q = 0; q < groups; q++)
    keep[q] = _mm256_cmpge_epu16_mask(_mm256_loadu_si256((const __m256i*)(lanes + 16 * q)), t);
}

thread_local Scratch scratch;

// what both passes read: a slab of texts packed as rows, its heads and its dropout
template <typename T>
struct SlabOf {
  const T* qkv;           // [n, 3D] bf16 (uint16_t) or fp32: q, k, v of every head side by side, D = heads d
  int64_t n, texts;
  const int64_t* starts;  // [texts] text t's first row
  const int64_t* lengths; // [texts] its rows (tokens)
  int heads, d, width;    // width: the slab's padded length W, which indexes the dropout mask
  float scale;            // of the scores, 1 / sqrt(d) in BERT
  uint64_t seed;
  uint16_t threshold;     // drop where the 16-bit lane < threshold (0: no dropout)
  float keep_scale;       // 1 / the keep probability
};
using Slab = SlabOf<uint16_t>;
using SlabF32 = SlabOf<float>;

// the row index of query i of text t, head h in the padded [texts, heads, W, W] block, times W
template <typename T>
inline int64_t mask_row(const SlabOf<T>& a, int64_t t, int h, int i) {
  return ((t * a.heads + h) * (int64_t)a.width + i) * (int64_t)a.width;
}

// task = t · heads + h: text t's rows and sizes, head h's columns of q, k and v
template <typename T>
struct HeadOf {
  int64_t t;
  int h, L, Lp, K2;  // L tokens, Lp = L rounded up to 16 (score columns), K2 = Lp / 2
  size_t row0;       // the text's first row
  const T *q, *k, *v;
};

template <typename T>
inline HeadOf<T> head_of(const SlabOf<T>& a, int64_t task) {
  const int64_t t = task / a.heads;
  const int h = (int)(task % a.heads), L = (int)a.lengths[t], Lp = round_up(L, 16), D = a.heads * a.d;
  const size_t row0 = (size_t)a.starts[t];
  const T* q = a.qkv + row0 * 3 * D + h * a.d;
  scratch.fit(Lp, a.d);
  return HeadOf<T>{t, h, L, Lp, Lp / 2, row0, q, q + D, q + 2 * D};
}

BF16 void forward_task(const Slab& a, int64_t task, uint16_t* context, float* stats) {
  const HeadOf<uint16_t> hd = head_of(a, task);
  const int64_t t = hd.t;
  const int h = hd.h, L = hd.L, Lp = hd.Lp, K2 = hd.K2, D = a.heads * a.d, ld = 3 * D, d = a.d;
  const size_t row0 = hd.row0;
  const uint16_t *q = hd.q, *k = hd.k, *v = hd.v;
  const float scale = a.scale;
  Scratch& sc = scratch;
  column_pairs(k, ld, L, Lp, d, sc.kp.data());
  row_pairs(v, ld, L, K2, d, sc.vp.data(), d);
  float* s = sc.s.data();
  gemm((const uint32_t*)q, ld / 2, sc.kp.data(), Lp, s, Lp, L, Lp, d / 2);
  uint16_t* probs = (uint16_t*)sc.a.data();  // [L, Lp] bf16, dropped and scaled
  uint16_t keep[64];
  for (int i = 0; i < L; i++) {
    float* row = s + (size_t)i * Lp;
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < Lp; j += 16) {
      const __mmask16 real = real_lanes(L, j);
      top = _mm512_mask_max_ps(top, real, top, _mm512_loadu_ps(row + j));
    }
    const float m = scale * _mm512_reduce_max_ps(top);  // scale > 0: the max of the scaled scores
    const __m512 alpha = _mm512_set1_ps(scale), shift = _mm512_set1_ps(m);
    const int64_t index = mask_row(a, t, h, i);
    keep_bits(sc, a.seed, a.threshold, index, Lp, keep);
    // the kept exponentials in bf16; the row's 1 / sum (and dropout's scale) multiplies its output
    __m512 total = _mm512_setzero_ps();
    for (int j = 0; j < Lp; j += 16) {
      const __m512 e = _mm512_maskz_mov_ps(real_lanes(L, j),
                                           exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(row + j), alpha, shift)));
      total = _mm512_add_ps(total, e);
      _mm256_storeu_si256((__m256i*)(probs + (size_t)i * Lp + j),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mov_ps(keep[j / 16], e)));
    }
    const float inverse = 1.0f / _mm512_reduce_add_ps(total);
    stats[(size_t)h * a.n + row0 + i] = m;
    stats[(size_t)(a.heads + h) * a.n + row0 + i] = inverse;
    sc.factor[i] = a.keep_scale * inverse;
  }
  float* out = sc.out.data();
  gemm((const uint32_t*)probs, Lp / 2, sc.vp.data(), d, out, d, L, d, K2);
  for (int i = 0; i < L; i++)
    store_bf16(out + (size_t)i * d, d, sc.factor[i], context + (row0 + i) * D + h * d);
}

BF16 void backward_task(const Slab& a, int64_t task, const uint16_t* context, const uint16_t* grad, const float* stats,
                   uint16_t* grad_qkv) {
  const HeadOf<uint16_t> hd = head_of(a, task);
  const int64_t t = hd.t;
  const int h = hd.h, L = hd.L, Lp = hd.Lp, K2 = hd.K2, R2 = (L + 1) / 2, D = a.heads * a.d, ld = 3 * D, d = a.d;
  const size_t row0 = hd.row0;
  const uint16_t *q = hd.q, *k = hd.k, *v = hd.v;
  Scratch& sc = scratch;
  const uint16_t* go = grad + row0 * D + h * d;
  const uint16_t* o = context + row0 * D + h * d;
  float* s = sc.s.data();  // scores
  float* g = sc.g.data();  // gradient of the dropped probabilities
  column_pairs(k, ld, L, Lp, d, sc.kp.data());
  gemm((const uint32_t*)q, ld / 2, sc.kp.data(), Lp, s, Lp, L, Lp, d / 2);
  column_pairs(v, ld, L, Lp, d, sc.vp.data());
  gemm((const uint32_t*)go, D / 2, sc.vp.data(), Lp, g, Lp, L, Lp, d / 2);
  // bf16 blocks: dS by rows ([L, Lp], the A operand of dq = dS k), and the dropped probabilities Y and
  // dS with rows 2m and 2m + 1 interleaved into pair row m ([R2, Lp] pairs, the B operands of
  // dvᵀ = doutᵀ Y and dkᵀ = qᵀ dS)
  uint16_t* dscores = (uint16_t*)sc.a.data();
  uint16_t* dropped_pairs = (uint16_t*)sc.b.data();
  uint16_t* dscore_pairs = (uint16_t*)sc.c.data();
  if (L % 2) {  // the last pair row has no second row: its upper halves stay 0
    memset(dropped_pairs + (size_t)(R2 - 1) * 2 * Lp, 0, (size_t)Lp * 4);
    memset(dscore_pairs + (size_t)(R2 - 1) * 2 * Lp, 0, (size_t)Lp * 4);
  }
  uint16_t keep[64];
  const __m512 ks = _mm512_set1_ps(a.keep_scale), alpha = _mm512_set1_ps(a.scale);
  for (int i = 0; i < L; i++) {
    const float* srow = s + (size_t)i * Lp;
    const float* grow = g + (size_t)i * Lp;
    const __m512 shift = _mm512_set1_ps(stats[(size_t)h * a.n + row0 + i]);
    const __m512 inverse = _mm512_set1_ps(stats[(size_t)(a.heads + h) * a.n + row0 + i]);
    // Σ_j P_ij dP_ij = dout_i · out_i (FlashAttention's D_i: out_i = Σ_j Y_ij v_j)
    const __m512 total = _mm512_set1_ps(row_dot(go + (size_t)i * D, o + (size_t)i * D, d));
    keep_bits(sc, a.seed, a.threshold, mask_row(a, t, h, i), Lp, keep);
    const int odd = i & 1;
    const __mmask32 half = odd ? 0xAAAAAAAAu : 0x55555555u;
    uint16_t* ypair = dropped_pairs + (size_t)(i / 2) * 2 * Lp;
    uint16_t* dpair = dscore_pairs + (size_t)(i / 2) * 2 * Lp;
    for (int j = 0; j < Lp; j += 16) {
      const __m512 p = _mm512_maskz_mul_ps(real_lanes(L, j),
                                           exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(srow + j), alpha, shift)), inverse);
      const __m512 dp = _mm512_maskz_mul_ps(keep[j / 16], _mm512_loadu_ps(grow + j), ks);
      const __m512i y = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_mul_ps(keep[j / 16], p, ks)));
      _mm512_mask_storeu_epi16(ypair + 2 * j, half, odd ? _mm512_slli_epi32(y, 16) : y);
      const __m256i ds = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_mul_ps(p, alpha), _mm512_sub_ps(dp, total)));
      _mm256_storeu_si256((__m256i*)(dscores + (size_t)i * Lp + j), ds);
      const __m512i w = _mm512_cvtepu16_epi32(ds);
      _mm512_mask_storeu_epi16(dpair + 2 * j, half, odd ? _mm512_slli_epi32(w, 16) : w);
    }
  }
  float* out = sc.out.data();
  uint16_t* gq = grad_qkv + row0 * ld + h * d;
  uint32_t* at = sc.kp.data();  // [d, R16]: a block's transpose in pairs of rows
  const int R16 = round_up(R2, 16);
  // dvᵀ = doutᵀ Y
  transposed_pairs(go, D, L, R2, d, sc.rp.data(), at);
  gemm(at, R16, (const uint32_t*)dropped_pairs, Lp, out, Lp, d, Lp, R2);
  store_transposed(out, Lp, L, d, gq + 2 * D, ld);
  // dq = dS k
  row_pairs(k, ld, L, K2, d, sc.rp.data(), d);
  gemm((const uint32_t*)dscores, Lp / 2, sc.rp.data(), d, out, d, L, d, K2);
  for (int i = 0; i < L; i++) store_bf16(out + (size_t)i * d, d, 1.0f, gq + (size_t)i * ld);
  // dkᵀ = qᵀ dS
  transposed_pairs(q, ld, L, R2, d, sc.rp.data(), at);
  gemm(at, R16, (const uint32_t*)dscore_pairs, Lp, out, Lp, d, Lp, R2);
  store_transposed(out, Lp, L, d, gq + D, ld);
}

// rows [L, d] of a head's columns (row stride ld), plus bias[d] where given → out [L, d] contiguous, d a
// multiple of 16. The products then read a head's 128-byte rows side by side instead of one per 4.6 KB
// (MiniLM's packed q, k, v rows are 3 · 384 floats long): 5 % off the fp32 forward and backward of
// 16 × 128 tokens, one core, caches flushed (docs/benchmarks.md)
inline void gather_rows(const float* rows, int64_t ld, int L, int d, const float* bias, float* out) {
  for (int c = 0; c < d; c += 16) {
    const __m512 b = bias == nullptr ? _mm512_setzero_ps() : _mm512_loadu_ps(bias + c);
    for (int i = 0; i < L; i++)
      _mm512_storeu_ps(out + (size_t)i * d + c, _mm512_add_ps(_mm512_loadu_ps(rows + (size_t)i * ld + c), b));
  }
}

// sums[c] = Σ_i rows[i ld + c] for c < d (d a multiple of 16): a head's share of a bias's gradient
inline void column_sums(const float* rows, int64_t ld, int L, int d, float* sums) {
  for (int c = 0; c < d; c += 16) {
    __m512 total = _mm512_setzero_ps();
    for (int i = 0; i < L; i++) total = _mm512_add_ps(total, _mm512_loadu_ps(rows + (size_t)i * ld + c));
    _mm512_storeu_ps(sums + c, total);
  }
}

// the fp32 passes: the bf16 ones' steps with fp32 blocks (the scratch's blocks of 32-bit words hold
// floats), every product on multiply-adds, and the outputs written straight into the packed rows
// bias [3D] (or null): the q, k, v projection's bias, added here to qkv's rows as they are read
void forward_task_f32(const SlabF32& a, int64_t task, const float* bias, float* context, float* stats) {
  const HeadOf<float> hd = head_of(a, task);
  const int64_t t = hd.t;
  const int h = hd.h, L = hd.L, Lp = hd.Lp, D = a.heads * a.d, ld = 3 * D, d = a.d;
  const size_t row0 = hd.row0;
  const float *q = hd.q, *k = hd.k, *v = hd.v;
  const float scale = a.scale;
  Scratch& sc = scratch;
  float* kt = (float*)sc.kp.data();  // [d, Lp]: kᵀ, keys L .. Lp - 1 zero
  float *qr = sc.rows_a.data(), *vr = sc.rows_b.data(), *kr = sc.rows_c.data();
  const float* hb = bias == nullptr ? nullptr : bias + h * d;  // this head's q bias; + D: k's, + 2D: v's
  gather_rows(q, ld, L, d, hb, qr);
  gather_rows(k, ld, L, d, hb == nullptr ? nullptr : hb + D, kr);
  gather_rows(v, ld, L, d, hb == nullptr ? nullptr : hb + 2 * D, vr);
  transpose_words((const uint32_t*)kr, d, L, Lp, d, (uint32_t*)kt, Lp);
  float* s = sc.s.data();
  gemm_f32(qr, d, 1, kt, Lp, s, Lp, L, Lp, d);
  float* probs = (float*)sc.a.data();  // [L, Lp]: the kept exponentials
  uint16_t keep[64];
  const int full = L & ~15;  // columns in whole vectors of real keys; the rest up to Lp: the last, masked
  const __mmask16 last = real_lanes(L, full);
  const __m512 alpha = _mm512_set1_ps(scale);
  for (int i = 0; i < L; i++) {
    const float* row = s + (size_t)i * Lp;
    float* kept = probs + (size_t)i * Lp;
    __m512 top = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < full; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(row + j));
    if (full < Lp) top = _mm512_mask_max_ps(top, last, top, _mm512_loadu_ps(row + full));
    const float m = scale * _mm512_reduce_max_ps(top);  // scale > 0: the max of the scaled scores
    const __m512 shift = _mm512_set1_ps(m);
    keep_bits(sc, a.seed, a.threshold, mask_row(a, t, h, i), Lp, keep);
    __m512 total = _mm512_setzero_ps();
    for (int j = 0; j < full; j += 16) {
      const __m512 e = exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(row + j), alpha, shift));
      total = _mm512_add_ps(total, e);
      _mm512_storeu_ps(kept + j, _mm512_maskz_mov_ps(keep[j / 16], e));
    }
    if (full < Lp) {
      const __m512 e = _mm512_maskz_mov_ps(last, exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(row + full), alpha, shift)));
      total = _mm512_add_ps(total, e);
      _mm512_storeu_ps(kept + full, _mm512_maskz_mov_ps(keep[full / 16], e));
    }
    const float inverse = 1.0f / _mm512_reduce_add_ps(total);
    stats[(size_t)h * a.n + row0 + i] = m;
    stats[(size_t)(a.heads + h) * a.n + row0 + i] = inverse;
    sc.factor[i] = a.keep_scale * inverse;
  }
  // the context [L, d] straight into the packed rows (row stride D), each row times its factor
  gemm_f32(probs, Lp, 1, vr, d, context + row0 * D + h * d, D, L, d, L, sc.factor.data());
}

// bias as the forward's; bias_sums (with bias): [texts, 3D], text t's row gets this head's column sums
// of dq, dk, dv (its share of the bias's gradient)
void backward_task_f32(const SlabF32& a, int64_t task, const float* bias, const float* grad, const float* stats,
                       float* grad_qkv, float* bias_sums) {
  const HeadOf<float> hd = head_of(a, task);
  const int64_t t = hd.t;
  const int h = hd.h, L = hd.L, Lp = hd.Lp, D = a.heads * a.d, ld = 3 * D, d = a.d;
  const size_t row0 = hd.row0;
  const float *q = hd.q, *k = hd.k, *v = hd.v;
  Scratch& sc = scratch;
  const float* go = grad + row0 * D + h * d;
  float* s = sc.s.data();  // scores
  float* g = sc.g.data();  // gradient of the dropped probabilities
  float* kt = (float*)sc.kp.data();
  float* vt = (float*)sc.vp.data();
  float *qr = sc.rows_a.data(), *kr = sc.rows_b.data(), *gr = sc.rows_c.data(), *vr = sc.rows_d.data();
  const float* hb = bias == nullptr ? nullptr : bias + h * d;
  gather_rows(q, ld, L, d, hb, qr);
  gather_rows(k, ld, L, d, hb == nullptr ? nullptr : hb + D, kr);
  gather_rows(v, ld, L, d, hb == nullptr ? nullptr : hb + 2 * D, vr);
  gather_rows(go, D, L, d, nullptr, gr);
  transpose_words((const uint32_t*)kr, d, L, Lp, d, (uint32_t*)kt, Lp);
  gemm_f32(qr, d, 1, kt, Lp, s, Lp, L, Lp, d);
  transpose_words((const uint32_t*)vr, d, L, Lp, d, (uint32_t*)vt, Lp);
  gemm_f32(gr, d, 1, vt, Lp, g, Lp, L, Lp, d);
  float* dropped = (float*)sc.a.data();  // [L, Lp] Y
  float* dscores = (float*)sc.b.data();  // [L, Lp] dS (scale included)
  uint16_t keep[64];
  const __m512 ks = _mm512_set1_ps(a.keep_scale), alpha = _mm512_set1_ps(a.scale);
  for (int i = 0; i < L; i++) {
    const float* srow = s + (size_t)i * Lp;
    const float* grow = g + (size_t)i * Lp;
    const __m512 shift = _mm512_set1_ps(stats[(size_t)h * a.n + row0 + i]);
    const __m512 inverse = _mm512_set1_ps(stats[(size_t)(a.heads + h) * a.n + row0 + i]);
    keep_bits(sc, a.seed, a.threshold, mask_row(a, t, h, i), Lp, keep);
    float* yrow = dropped + (size_t)i * Lp;
    float* drow = dscores + (size_t)i * Lp;
    // P (in dS's row for now) and Y; Σ_j P_ij dP_ij = Σ_j Y_ij G_ij (= dout_i · out_i, FlashAttention's
    // D_i, from the row at hand rather than from the context's scattered rows)
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < Lp; j += 16) {
      const __m512 p = _mm512_maskz_mul_ps(real_lanes(L, j),
                                           exp_ps(_mm512_fmsub_ps(_mm512_loadu_ps(srow + j), alpha, shift)), inverse);
      const __m512 y = _mm512_maskz_mul_ps(keep[j / 16], p, ks);
      sum = _mm512_fmadd_ps(y, _mm512_loadu_ps(grow + j), sum);
      _mm512_storeu_ps(yrow + j, y);
      _mm512_storeu_ps(drow + j, p);
    }
    const __m512 total = _mm512_set1_ps(_mm512_reduce_add_ps(sum));
    for (int j = 0; j < Lp; j += 16) {
      const __m512 p = _mm512_loadu_ps(drow + j);
      const __m512 dp = _mm512_maskz_mul_ps(keep[j / 16], _mm512_loadu_ps(grow + j), ks);
      _mm512_storeu_ps(drow + j, _mm512_mul_ps(_mm512_mul_ps(p, alpha), _mm512_sub_ps(dp, total)));
    }
  }
  float* gq = grad_qkv + row0 * ld + h * d;
  gemm_f32(dropped, 1, Lp, gr, d, gq + 2 * D, ld, L, d, L);  // dv = Yᵀ dout
  gemm_f32(dscores, Lp, 1, kr, d, gq, ld, L, d, L);          // dq = dS k
  gemm_f32(dscores, 1, Lp, qr, d, gq + D, ld, L, d, L);      // dk = dSᵀ q
  if (bias_sums != nullptr)
    for (int part = 0; part < 3; part++)
      column_sums(gq + part * D, ld, L, d, bias_sums + (size_t)t * ld + part * D + h * d);
}

}  // namespace

extern "C" {

// context [n, D] bf16: every text's attention over its own tokens, each head in its columns; stats
// [2, heads, n] fp32: each query row's max scaled score and 1 / the sum of its exponentials, for the
// backward
void attention_forward(const uint16_t* qkv, int64_t texts, const int64_t* starts, const int64_t* lengths,
                       int heads, int d, int width, float scale, uint64_t seed, uint16_t threshold,
                       float keep_scale, int threads, uint16_t* context, float* stats, int64_t n) {
  const Slab a{qkv, n, texts, starts, lengths, heads, d, width, scale, seed, threshold, keep_scale};
  for_tasks(texts * heads, threads, [&](int64_t task) { forward_task(a, task, context, stats); });
}

// grad [n, D] bf16 (of the context, the forward's output) → grad_qkv [n, 3D] bf16, every column of every
// text's rows written
void attention_backward(const uint16_t* qkv, const uint16_t* context, const uint16_t* grad, const float* stats,
                        int64_t texts, const int64_t* starts, const int64_t* lengths, int heads, int d, int width,
                        float scale, uint64_t seed, uint16_t threshold, float keep_scale, int threads,
                        uint16_t* grad_qkv, int64_t n) {
  const Slab a{qkv, n, texts, starts, lengths, heads, d, width, scale, seed, threshold, keep_scale};
  for_tasks(texts * heads, threads, [&](int64_t task) { backward_task(a, task, context, grad, stats, grad_qkv); });
}

// the same in fp32: qkv [n, 3D], context [n, D], grad [n, D], grad_qkv [n, 3D] (the fp32 backward
// takes each row's Σ_j P_ij dP_ij from its task's own blocks and does not read the context); bias [3D]
// or null: the projection's bias, added to every row of qkv as it is read (qkv then holds the product
// alone); bias_sums [texts, 3D] or null: each text's column sums of grad_qkv, whose sum over the texts
// is the bias's gradient
void attention_forward_f32(const float* qkv, int64_t texts, const int64_t* starts, const int64_t* lengths,
                           int heads, int d, int width, float scale, uint64_t seed, uint16_t threshold,
                           float keep_scale, int threads, float* context, float* stats, int64_t n,
                           const float* bias) {
  const SlabF32 a{qkv, n, texts, starts, lengths, heads, d, width, scale, seed, threshold, keep_scale};
  for_tasks(texts * heads, threads, [&](int64_t task) { forward_task_f32(a, task, bias, context, stats); });
}

void attention_backward_f32(const float* qkv, const float* context, const float* grad, const float* stats,
                            int64_t texts, const int64_t* starts, const int64_t* lengths, int heads, int d,
                            int width, float scale, uint64_t seed, uint16_t threshold, float keep_scale,
                            int threads, float* grad_qkv, int64_t n, const float* bias, float* bias_sums) {
  const SlabF32 a{qkv, n, texts, starts, lengths, heads, d, width, scale, seed, threshold, keep_scale};
  for_tasks(texts * heads, threads,
            [&](int64_t task) { backward_task_f32(a, task, bias, grad, stats, grad_qkv, bias_sums); });
}

// keep[e] = 1 where element e of the padded [texts, heads, width, width] block is kept: the mask the
// passes above draw (for tests)
void attention_keep_mask(int64_t elements, uint64_t seed, uint16_t threshold, uint8_t* keep) {
  std::vector<uint64_t> words((elements + 3) / 4 + 8);
  splitmix_words(words.data(), seed, 0, (int)((elements + 3) / 4));
  const uint16_t* lanes = (const uint16_t*)words.data();
  for (int64_t e = 0; e < elements; e++) keep[e] = lanes[e] >= threshold;
}

}  // extern "C"
