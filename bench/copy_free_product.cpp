// A dense layer's forward product without copying the activations: Y[M, N] = X[M, K] · W[N, K]ᵀ,
// the weight laid out once as column panels P[N / 32][K][32], the activations' rows read where they
// lie (each element broadcast into a multiply-add), 14 rows × 32 columns a micro-kernel (28
// accumulators). MKL copies ("packs") both operands into its own layout first; bench/copy_free_product.py
// asks whether skipping that copy of X buys anything. Built by contrastkit.fused_attention.build.
#include <immintrin.h>
#include <cstdint>

namespace {

template <int R, bool ADD>
inline void micro(const float* x, int ldx, const float* panel, int kc, float* y, int ldy) {
  __m512 acc[R][2];
  for (int r = 0; r < R; r++) {
    acc[r][0] = ADD ? _mm512_loadu_ps(y + (int64_t)r * ldy) : _mm512_setzero_ps();
    acc[r][1] = ADD ? _mm512_loadu_ps(y + (int64_t)r * ldy + 16) : _mm512_setzero_ps();
  }
  for (int k = 0; k < kc; k++) {
    const __m512 b0 = _mm512_load_ps(panel + k * 32), b1 = _mm512_load_ps(panel + k * 32 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) {
      const __m512 a = _mm512_set1_ps(x[(int64_t)r * ldx + k]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; r++) {
    _mm512_storeu_ps(y + (int64_t)r * ldy, acc[r][0]);
    _mm512_storeu_ps(y + (int64_t)r * ldy + 16, acc[r][1]);
  }
}

template <bool ADD>
void rows(const float* x, int K, const float* panel, int kc, float* y, int N, int m0, int m1) {
  int m = m0;
  for (; m + 14 <= m1; m += 14) micro<14, ADD>(x + (int64_t)m * K, K, panel, kc, y + (int64_t)m * N, N);
  for (; m < m1; m++) micro<1, ADD>(x + (int64_t)m * K, K, panel, kc, y + (int64_t)m * N, N);
}

}  // namespace

extern "C" {

// P[n / 32][k][n % 32] = W[n][k]; N a multiple of 32
void pack_panels(const float* w, int N, int K, float* p) {
  for (int nb = 0; nb < N / 32; nb++)
    for (int k = 0; k < K; k++)
      for (int j = 0; j < 32; j++) p[((int64_t)nb * K + k) * 32 + j] = w[(int64_t)(nb * 32 + j) * K + k];
}

// Y = X · Wᵀ from the panels: blocks of mc rows, each over K in blocks of kc (the partial sums stored
// and reloaded, so every output sums its K products in the same order whatever the blocking)
void product(const float* x, const float* p, float* y, int M, int N, int K, int mc, int kc) {
  for (int m0 = 0; m0 < M; m0 += mc) {
    const int m1 = m0 + mc < M ? m0 + mc : M;
    for (int k0 = 0; k0 < K; k0 += kc) {
      const int kk = k0 + kc < K ? kc : K - k0;
      for (int nb = 0; nb < N / 32; nb++) {
        const float* panel = p + ((int64_t)nb * K + k0) * 32;
        if (k0 == 0) rows<false>(x, K, panel, kk, y + nb * 32, N, m0, m1);
        else rows<true>(x + k0, K, panel, kk, y + nb * 32, N, m0, m1);
      }
    }
  }
}

}  // extern "C"
