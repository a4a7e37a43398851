// Sparse-query causal attention on the CPU, fp32: the C++ fast path of kernels/sparse_attention.py.
//
// Queries at sorted positions pos[0..m) attend to keys 0..pos[i] of a merged cache laid out by position.
// One task = (KV head, block of BQ queries); the G query heads of the GQA group are packed as rows
// (row r = head-in-group r / bq, query r % bq), so every key tile is read once per group. Per key tile of
// BK keys: S = Q Kt (Q pre-scaled by scale * log2 e), causal mask only on the tiles that cross a row's
// position, online softmax in base 2, O += P V. Tiles past the block's last position are never visited.
//
// Portable C++ with GCC/Clang vector extensions; no torch headers. The vector width and the register
// blocking come from the compiler's target macros, so every -march build keeps its micro-tiles inside
// its register file: AVX-512 (32 x 16 floats), AVX/AVX2 (16 x 8), NEON (32 x 4), SSE (16 x 4).
// Rows are padded to the micro-tile heights, so the inner loops carry no row conditions.
//
// bf16 variant (builds with AVX512-BF16 only: `sparse_attention_bf16`): the same tiling and fp32 online softmax,
// with both products on bf16 dot-product instructions (VDPBF16PS: two bf16 products into one fp32 lane). Q is
// rounded to bf16 after its scaling, P after the softmax; K and V come packed in bf16 by the caller, keys padded
// to whole tiles: kp [KV, D/2, kv_pad, 2] (dimension pairs per key) and vp [KV, kv_pad/2, D, 2] (key pairs per
// dimension). Accumulation stays fp32.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <thread>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <vector>
#if defined(__AVX512BF16__)
#include <immintrin.h>
#define CHUNKCACHE_BF16 1
#else
#define CHUNKCACHE_BF16 0
#endif

namespace {

#if defined(__AVX512F__)
constexpr int W = 16, MR = 8, NV = 2, PR = 4, PC = 4;  // QK: 8x2 accumulators; PV: 4x4
#elif defined(__AVX__)
constexpr int W = 8, MR = 6, NV = 2, PR = 6, PC = 2;   // 12 accumulators + 2 loads + 1 broadcast of 16
#elif defined(__ARM_NEON) || defined(__aarch64__)
constexpr int W = 4, MR = 6, NV = 4, PR = 6, PC = 4;   // 24 accumulators + 4 loads of 32
#else
constexpr int W = 4, MR = 6, NV = 2, PR = 6, PC = 2;   // SSE: 16 registers
#endif
typedef float vf __attribute__((vector_size(W * 4)));
typedef int32_t vi __attribute__((vector_size(W * 4)));
constexpr int BK = 128;  // keys per tile
constexpr int ROW_PAD = MR * PR;  // rows are padded to a multiple of both micro-tile heights
static_assert(BK % (NV * W) == 0, "a key tile is a whole number of QK micro-tiles");

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return x - vf{}; }  // a broadcast: x - 0 is x for every x (0 + x is not, for -0)

// 2^x for x <= 0 (x >= -126 gives a normal result; below, 0). Degree-6 polynomial on the fraction.
inline vf exp2v(vf x) {
  x = x < splat(-126.f) ? splat(-126.f) : x;
  const vf magic = splat(12582912.f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  vf n = (x + magic) - magic;
  vf f = x - n;  // [-0.5, 0.5]
  vf p = splat(1.535336188319500e-4f);
  p = p * f + splat(1.339887440266574e-3f);
  p = p * f + splat(9.618437357674640e-3f);
  p = p * f + splat(5.550332471162809e-2f);
  p = p * f + splat(2.402264791363012e-1f);
  p = p * f + splat(6.931472028550421e-1f);
  p = p * f + splat(1.0f);
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale_;
  std::memcpy(&scale_, &e, sizeof e);
  return p * scale_;
}

struct Args {
  const float* q; const float* kt; const float* v; float* out; const int64_t* pos;
  const uint16_t* kp; const uint16_t* vp;  // bf16 variant: packed K and V (kt, v unused)
  int64_t m, g, bq, kv_len, kv_pad;        // kv_pad: keys per head in kp / vp (a multiple of BK)
  int64_t s_qh, s_qm;      // q [H, m, D]: head, query strides (last dim contiguous)
  int64_t s_kth, s_ktd;    // kt [KV, D, kv_len]: head, dim strides (keys contiguous)
  int64_t s_vh, s_vn;      // v [KV, >= kv_len, D]
  int64_t s_oh, s_om;      // out [H, m, D]
  float qk_scale;          // scale * log2(e)
};

// S[r][0..BK) = Q[r] . Kt[:, 0..BK) for r in [0, rows), rows a multiple of MR: micro-tiles of MR x NV*W.
template <int D>
void qk_tile(const float* Q, const float* kt, int64_t s_ktd, int64_t rows, float* S) {
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    for (int c = 0; c < BK; c += NV * W) {
      vf acc[MR][NV] = {};
      for (int d = 0; d < D; ++d) {
        vf k[NV];
        for (int j = 0; j < NV; ++j) k[j] = load(kt + d * s_ktd + c + j * W);
        for (int r = 0; r < MR; ++r) {
          const vf qd = splat(Q[(r0 + r) * D + d]);
          for (int j = 0; j < NV; ++j) acc[r][j] += qd * k[j];
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NV; ++j) store(S + (r0 + r) * BK + c + j * W, acc[r][j]);
    }
  }
}

// O[r] += P[r][0..nk) V[0..nk) for r in [0, rows), rows a multiple of PR: PR rows x PC vectors of D at a time.
template <int D>
void pv_tile(const float* P, const float* v, int64_t s_vn, int64_t rows, int nk, float* O) {
  static_assert(D % (PC * W) == 0, "head_dim is a whole number of PV column blocks");
  for (int64_t r0 = 0; r0 < rows; r0 += PR) {
    for (int cb = 0; cb < D; cb += PC * W) {
      vf acc[PR][PC];
      for (int r = 0; r < PR; ++r)
        for (int j = 0; j < PC; ++j) acc[r][j] = load(O + (r0 + r) * D + cb + j * W);
      for (int c = 0; c < nk; ++c) {
        vf vv[PC];
        for (int j = 0; j < PC; ++j) vv[j] = load(v + c * s_vn + cb + j * W);
        for (int r = 0; r < PR; ++r) {
          const vf p = splat(P[(r0 + r) * BK + c]);
          for (int j = 0; j < PC; ++j) acc[r][j] += p * vv[j];
        }
      }
      for (int r = 0; r < PR; ++r)
        for (int j = 0; j < PC; ++j) store(O + (r0 + r) * D + cb + j * W, acc[r][j]);
    }
  }
}

#if CHUNKCACHE_BF16
static_assert(W == 16 && NV == 2 && PC == 4, "the bf16 tiles use the AVX-512 micro-tiles");

// x[0..n) fp32 -> n/2 bf16 pairs (x[2i] low, x[2i+1] high), round to nearest even as torch's
// .to(torch.bfloat16); n a multiple of 2 * W.
inline void to_bf16_pairs(const float* x, int64_t n, uint32_t* pairs) {
  for (int64_t c = 0; c < n; c += 2 * W)
    _mm512_storeu_si512(pairs + c / 2,
                        (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + c + W), _mm512_loadu_ps(x + c)));
}

// S[r][0..BK) = Q[r] . K[0..BK) for r in [0, rows): Qp [rows, D/2] bf16 pairs; kp at the tile, [D/2, kv_pad, 2].
template <int D>
void qk_tile_bf16(const uint32_t* Qp, const uint16_t* kp, int64_t kv_pad, int64_t rows, float* S) {
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    for (int c = 0; c < BK; c += NV * W) {
      __m512 acc[MR][NV];
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_setzero_ps();
      for (int d2 = 0; d2 < D / 2; ++d2) {
        const uint16_t* kd = kp + (d2 * kv_pad + c) * 2;
        __m512bh k[NV];
        for (int j = 0; j < NV; ++j) k[j] = (__m512bh)_mm512_loadu_si512(kd + j * W * 2);
        for (int r = 0; r < MR; ++r) {
          const __m512bh qd = (__m512bh)_mm512_set1_epi32((int)Qp[(r0 + r) * (D / 2) + d2]);
          for (int j = 0; j < NV; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], qd, k[j]);
        }
      }
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NV; ++j) _mm512_storeu_ps(S + (r0 + r) * BK + c + j * W, acc[r][j]);
    }
  }
}

// O[r] += P[r][0..nk) V[0..nk) for r in [0, rows): P rounded to bf16 pairs in Pp [rows, BK/2]; vp at the tile,
// [BK/2, D, 2]. An odd nk reads one key past it, with probability 0 (the scores past `vis` are zeroed).
template <int D>
void pv_tile_bf16(const float* P, uint32_t* Pp, const uint16_t* vp, int64_t rows, int nk, float* O) {
  to_bf16_pairs(P, rows * BK, Pp);
  const int n2 = (nk + 1) / 2;
  for (int64_t r0 = 0; r0 < rows; r0 += PR) {
    for (int cb = 0; cb < D; cb += PC * W) {
      __m512 acc[PR][PC];
      for (int r = 0; r < PR; ++r)
        for (int j = 0; j < PC; ++j) acc[r][j] = _mm512_loadu_ps(O + (r0 + r) * D + cb + j * W);
      for (int c2 = 0; c2 < n2; ++c2) {
        __m512bh vv[PC];
        for (int j = 0; j < PC; ++j) vv[j] = (__m512bh)_mm512_loadu_si512(vp + (c2 * D + cb + j * W) * 2);
        for (int r = 0; r < PR; ++r) {
          const __m512bh p = (__m512bh)_mm512_set1_epi32((int)Pp[(r0 + r) * (BK / 2) + c2]);
          for (int j = 0; j < PC; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], p, vv[j]);
        }
      }
      for (int r = 0; r < PR; ++r)
        for (int j = 0; j < PC; ++j) _mm512_storeu_ps(O + (r0 + r) * D + cb + j * W, acc[r][j]);
    }
  }
}
#endif

// Softmax step of one row over its first `vis` scores (the rest zeroed): updates mx, sum, rescales O.
template <int D>
void softmax_row(float* s, int vis, float& mx, float& sum, float* o) {
  float tmax = mx;
  int c = 0;
  vf vmax = splat(tmax);
  for (; c + W <= vis; c += W) {
    const vf x = load(s + c);
    vmax = x > vmax ? x : vmax;
  }
  for (int j = 0; j < W; ++j) tmax = std::max(tmax, vmax[j]);
  for (; c < vis; ++c) tmax = std::max(tmax, s[c]);
  const float alpha = std::exp2(mx - tmax);
  vf acc = {};
  const vf mv = splat(tmax);
  for (c = 0; c + W <= vis; c += W) {
    const vf p = exp2v(load(s + c) - mv);
    store(s + c, p);
    acc += p;
  }
  float l = 0.f;
  for (; c < vis; ++c) {
    s[c] = std::exp2(s[c] - tmax);
    l += s[c];
  }
  for (int j = 0; j < W; ++j) l += acc[j];
  std::fill(s + vis, s + BK, 0.f);
  sum = sum * alpha + l;
  mx = tmax;
  if (alpha != 1.f)
    for (int d = 0; d < D; ++d) o[d] *= alpha;
}

template <int D, bool BF16>
void run_task(const Args& a, int64_t kvh, int64_t blk, std::vector<float>& buf, std::vector<int64_t>& rpos,
              [[maybe_unused]] std::vector<uint32_t>& packed) {
  const int64_t i0 = blk * a.bq, nq = std::min(a.bq, a.m - i0), rows = a.g * nq;
  const int64_t prows = (rows + ROW_PAD - 1) / ROW_PAD * ROW_PAD;  // padded rows: zero queries, ignored
  buf.assign(prows * (D + BK + D) + 2 * prows, 0.f);
  float* Q = buf.data();          // [prows, D] pre-scaled queries
  float* S = Q + prows * D;       // [prows, BK] scores, then probabilities
  float* O = S + prows * BK;      // [prows, D] unnormalised output
  float* mx = O + prows * D;      // [rows] running max (base 2)
  float* sum = mx + prows;        // [rows] running denominator
  rpos.resize(rows);
  for (int64_t j = 0; j < a.g; ++j) {
    const float* qh = a.q + (kvh * a.g + j) * a.s_qh;
    for (int64_t i = 0; i < nq; ++i) {
      const float* src = qh + (i0 + i) * a.s_qm;
      float* dst = Q + (j * nq + i) * D;
      for (int d = 0; d < D; ++d) dst[d] = src[d] * a.qk_scale;
      rpos[j * nq + i] = a.pos[i0 + i];
    }
  }
#if CHUNKCACHE_BF16
  uint32_t* Qp = nullptr;  // bf16: [prows, D/2] query pairs, then [prows, BK/2] probability pairs
  uint32_t* Pp = nullptr;
  if constexpr (BF16) {
    packed.assign(prows * (D / 2 + BK / 2), 0u);
    Qp = packed.data();
    Pp = Qp + prows * (D / 2);
    to_bf16_pairs(Q, prows * D, Qp);
  }
#endif
  std::fill(mx, mx + rows, -INFINITY);
  const int64_t lo = a.pos[i0], hi = a.pos[i0 + nq - 1];
  const float* kt = nullptr;  // fp32: this head's keys (by dim) and values
  const float* vh = nullptr;
  if constexpr (!BF16) {
    kt = a.kt + kvh * a.s_kth;
    vh = a.v + kvh * a.s_vh;
  }
  [[maybe_unused]] const int64_t head16 = kvh * D * a.kv_pad;  // bf16: kp and vp hold D * kv_pad values a head
  std::vector<float> pad;
  for (int64_t n0 = 0; n0 <= hi; n0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, hi + 1 - n0);
    if constexpr (BF16) {
#if CHUNKCACHE_BF16
      qk_tile_bf16<D>(Qp, a.kp + head16 + n0 * 2, a.kv_pad, prows, S);  // keys padded: whole tiles
#endif
    } else if (nk == BK && n0 + BK <= a.kv_len) {
      qk_tile<D>(Q, kt + n0, a.s_ktd, prows, S);
    } else {  // last tile: copy the keys that exist into a zero-padded tile
      pad.assign(D * BK, 0.f);
      for (int d = 0; d < D; ++d)
        for (int c = 0; c < nk; ++c) pad[d * BK + c] = kt[d * a.s_ktd + n0 + c];
      qk_tile<D>(Q, pad.data(), BK, prows, S);
    }
    const bool masked = n0 + nk - 1 > lo;  // some row cannot see the whole tile
    for (int64_t r = 0; r < rows; ++r) {
      float* s = S + r * BK;
      const int vis = masked ? (int)std::clamp<int64_t>(rpos[r] - n0 + 1, 0, nk) : nk;
      if (vis == 0) std::fill(s, s + BK, 0.f);
      else softmax_row<D>(s, vis, mx[r], sum[r], O + r * D);
    }
    std::fill(S + rows * BK, S + prows * BK, 0.f);  // padded rows add nothing
    if constexpr (BF16) {
#if CHUNKCACHE_BF16
      pv_tile_bf16<D>(S, Pp, a.vp + head16 + n0 * D, prows, nk, O);  // key pair n0 / 2 starts at n0 * D
#endif
    } else {
      pv_tile<D>(S, vh + n0 * a.s_vn, a.s_vn, prows, nk, O);
    }
  }
  for (int64_t j = 0; j < a.g; ++j) {
    float* oh = a.out + (kvh * a.g + j) * a.s_oh;
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t r = j * nq + i;
      const float inv = 1.f / sum[r];
      float* dst = oh + (i0 + i) * a.s_om;
      for (int d = 0; d < D; ++d) dst[d] = O[r * D + d] * inv;
    }
  }
}

// Runs every task; returns 0, or 3 when a worker failed (allocation): no exception leaves this function.
template <int D, bool BF16>
int run(const Args& a, int64_t n_kv, int threads) {
  const int64_t blocks = (a.m + a.bq - 1) / a.bq, tasks = n_kv * blocks;
  std::vector<int> failed(std::max(threads, 1), 0);
  // Later blocks read more keys: hand tasks out longest first, round-robin by thread.
  auto work = [&](int t, int stride) noexcept {
    try {
      std::vector<float> buf;
      std::vector<int64_t> rpos;
      std::vector<uint32_t> packed;
      for (int64_t k = t; k < tasks; k += stride)
        run_task<D, BF16>(a, k % n_kv, blocks - 1 - k / n_kv, buf, rpos, packed);
    } catch (...) {
      failed[t] = 1;
    }
  };
#ifdef _OPENMP
  // Linked to torch's OpenMP runtime: its pool's threads (spinning after torch's last op) take the strides,
  // instead of new threads that would share the cores with them. The team may be smaller than asked.
#pragma omp parallel num_threads(threads)
  work(omp_get_thread_num(), omp_get_num_threads());
#else
  std::vector<std::thread> pool;
  int started = 1;
  try {
    for (int t = 1; t < threads; ++t, ++started) pool.emplace_back(work, t, threads);
  } catch (...) {  // no thread could start: the remaining strides run here
  }
  work(0, threads);
  for (auto& th : pool) th.join();
  for (int t = started; t < threads; ++t) work(t, threads);
#endif
  return *std::max_element(failed.begin(), failed.end()) ? 3 : 0;
}

// run<D, BF16> for the head dim d: its return code, 2 for a head dim other than 64 or 128, 3 when it threw.
template <bool BF16>
int run_head_dim(const Args& a, int64_t d, int64_t n_kv, int threads) {
  try {
    if (d == 64) return run<64, BF16>(a, n_kv, threads);
    if (d == 128) return run<128, BF16>(a, n_kv, threads);
  } catch (...) {
    return 3;
  }
  return 2;
}

}  // namespace

// The floats per vector this build uses (16 AVX-512, 8 AVX/AVX2, 4 SSE/NEON): reported by the loader.
extern "C" int sparse_attention_vector_width() { return W; }

// 1 when this build runs its threads from the OpenMP runtime it was linked to (torch's), 0 with std::thread.
extern "C" int sparse_attention_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// Return codes: 0 done; 1 bad shape arguments; 2 head_dim not 64 or 128; 3 a worker failed (out of memory).
extern "C" int sparse_attention_f32(const float* q, const float* kt, const float* v, float* out, const int64_t* pos,
                                    int64_t n_heads, int64_t n_kv, int64_t m, int64_t d, int64_t kv_len, int64_t bq,
                                    int64_t s_qh, int64_t s_qm, int64_t s_kth, int64_t s_ktd, int64_t s_vh,
                                    int64_t s_vn, int64_t s_oh, int64_t s_om, float scale, int threads) {
  if (n_kv <= 0 || n_heads % n_kv || m <= 0 || bq <= 0 || threads <= 0) return 1;
  Args a{q, kt, v, out, pos, nullptr, nullptr, m, n_heads / n_kv, bq, kv_len, kv_len, s_qh, s_qm, s_kth, s_ktd,
         s_vh, s_vn, s_oh, s_om, scale * 1.4426950408889634f};
  return run_head_dim<false>(a, d, n_kv, threads);
}

// 1 when this build has the bf16 variant (compiled with AVX512-BF16), else 0.
extern "C" int sparse_attention_bf16_available() { return CHUNKCACHE_BF16; }

// The bf16 variant: kp [n_kv, d/2, kv_pad, 2] and vp [n_kv, kv_pad/2, d, 2] bf16 (as uint16), contiguous, keys
// past kv_len zero; kv_pad a multiple of 128 and >= kv_len. Return codes as above, and 4: built without bf16.
extern "C" int sparse_attention_bf16(const float* q, const uint16_t* kp, const uint16_t* vp, float* out,
                                     const int64_t* pos, int64_t n_heads, int64_t n_kv, int64_t m, int64_t d,
                                     int64_t kv_len, int64_t kv_pad, int64_t bq, int64_t s_qh, int64_t s_qm,
                                     int64_t s_oh, int64_t s_om, float scale, int threads) {
  if (n_kv <= 0 || n_heads % n_kv || m <= 0 || bq <= 0 || threads <= 0 || kv_pad % BK || kv_pad < kv_len) return 1;
  if (!CHUNKCACHE_BF16) return 4;
  Args a{q, nullptr, nullptr, out, pos, kp, vp, m, n_heads / n_kv, bq, kv_len, kv_pad, s_qh, s_qm, 0, 0, 0, 0, s_oh,
         s_om, scale * 1.4426950408889634f};
  return run_head_dim<true>(a, d, n_kv, threads);
}
