// Sparse-query causal attention on the CPU, fp32: the C++ fast path of kernels/sparse_attention.py.
//
// Queries at sorted positions pos[0..m) attend to keys 0..pos[i] of a merged cache laid out by position.
// One task = (KV head, block of BQ queries); the G query heads of the GQA group are packed as rows
// (row r = head-in-group r / bq, query r % bq), so every key tile is read once per group. Per key tile of
// BK keys: S = Q Kt (Q pre-scaled by scale * log2 e), causal mask only on the tiles that cross a row's
// position, online softmax in base 2, O += P V. Tiles past the block's last position are never visited.
// Plain C++ with GCC vector extensions (16 floats), built with -O3 -march=native; no torch headers.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));  // 16 floats: one AVX-512 register
typedef int32_t vi __attribute__((vector_size(64)));
constexpr int W = 16;   // floats per vf
constexpr int BK = 128; // keys per tile
constexpr int MR = 8;   // rows per QK micro-tile

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }

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
  int64_t m, g, bq, kv_len;
  int64_t s_qh, s_qm;      // q [H, m, D]: head, query strides (last dim contiguous)
  int64_t s_kth, s_ktd;    // kt [KV, D, kv_len]: head, dim strides (keys contiguous)
  int64_t s_vh, s_vn;      // v [KV, >= kv_len, D]
  int64_t s_oh, s_om;      // out [H, m, D]
  float qk_scale;          // scale * log2(e)
};

// S[r][0..BK) = Q[r] . Kt[:, n0..n0+BK) for r in [0, rows): micro-tiles of MR rows x 32 keys.
template <int D>
void qk_tile(const float* Q, const float* kt, int64_t s_ktd, int64_t rows, float* S) {
  for (int64_t r0 = 0; r0 < rows; r0 += MR) {
    const int nr = (int)std::min<int64_t>(MR, rows - r0);
    for (int c = 0; c < BK; c += 2 * W) {
      vf acc[MR][2] = {};
      for (int d = 0; d < D; ++d) {
        const vf k0 = load(kt + d * s_ktd + c), k1 = load(kt + d * s_ktd + c + W);
        for (int r = 0; r < MR; ++r) {
          if (r < nr) {
            const vf qd = splat(Q[(r0 + r) * D + d]);
            acc[r][0] += qd * k0;
            acc[r][1] += qd * k1;
          }
        }
      }
      for (int r = 0; r < nr; ++r) {
        store(S + (r0 + r) * BK + c, acc[r][0]);
        store(S + (r0 + r) * BK + c + W, acc[r][1]);
      }
    }
  }
}

// O[r] += P[r][0..nk) V[n0..n0+nk) for r in [0, rows), 4 rows at a time, D/16 vectors per row.
template <int D>
void pv_tile(const float* P, const float* v, int64_t s_vn, int64_t rows, int nk, float* O) {
  constexpr int DV = D / W;
  for (int64_t r0 = 0; r0 < rows; r0 += 4) {
    const int nr = (int)std::min<int64_t>(4, rows - r0);
    vf acc[4][DV];
    for (int r = 0; r < 4; ++r)
      for (int j = 0; j < DV; ++j) acc[r][j] = r < nr ? load(O + (r0 + r) * D + j * W) : vf{};
    for (int c = 0; c < nk; ++c) {
      vf vv[DV];
      for (int j = 0; j < DV; ++j) vv[j] = load(v + c * s_vn + j * W);
      for (int r = 0; r < 4; ++r) {
        if (r < nr) {
          const vf p = splat(P[(r0 + r) * BK + c]);
          for (int j = 0; j < DV; ++j) acc[r][j] += p * vv[j];
        }
      }
    }
    for (int r = 0; r < nr; ++r)
      for (int j = 0; j < DV; ++j) store(O + (r0 + r) * D + j * W, acc[r][j]);
  }
}

template <int D>
void run_task(const Args& a, int64_t kvh, int64_t blk, std::vector<float>& buf) {
  const int64_t i0 = blk * a.bq, nq = std::min(a.bq, a.m - i0), rows = a.g * nq;
  buf.resize(rows * (D + BK + D) + 2 * rows + BK);
  float* Q = buf.data();          // [rows, D] pre-scaled queries
  float* S = Q + rows * D;        // [rows, BK] scores, then probabilities
  float* O = S + rows * BK;       // [rows, D] unnormalised output
  float* mx = O + rows * D;       // [rows] running max (base 2)
  float* sum = mx + rows;         // [rows] running denominator
  std::vector<int64_t> rpos(rows);
  for (int64_t j = 0; j < a.g; ++j) {
    const float* qh = a.q + (kvh * a.g + j) * a.s_qh;
    for (int64_t i = 0; i < nq; ++i) {
      const float* src = qh + (i0 + i) * a.s_qm;
      float* dst = Q + (j * nq + i) * D;
      for (int d = 0; d < D; ++d) dst[d] = src[d] * a.qk_scale;
      rpos[j * nq + i] = a.pos[i0 + i];
    }
  }
  std::fill(O, O + rows * D, 0.f);
  std::fill(mx, mx + rows, -INFINITY);
  std::fill(sum, sum + rows, 0.f);
  const int64_t lo = a.pos[i0], hi = a.pos[i0 + nq - 1];
  const float* kt = a.kt + kvh * a.s_kth;
  const float* vh = a.v + kvh * a.s_vh;
  for (int64_t n0 = 0; n0 <= hi; n0 += BK) {
    const int nk = (int)std::min<int64_t>(BK, hi + 1 - n0);
    if (nk == BK && n0 + BK <= a.kv_len) {
      qk_tile<D>(Q, kt + n0, a.s_ktd, rows, S);
    } else {  // last tile: copy the keys that exist into a zero-padded tile
      float pad[D * BK];
      for (int d = 0; d < D; ++d)
        for (int c = 0; c < BK; ++c) pad[d * BK + c] = c < nk ? kt[d * a.s_ktd + n0 + c] : 0.f;
      qk_tile<D>(Q, pad, BK, rows, S);
    }
    const bool masked = n0 + nk - 1 > lo;  // some row cannot see the whole tile
    for (int64_t r = 0; r < rows; ++r) {
      float* s = S + r * BK;
      const int vis = masked ? (int)std::clamp<int64_t>(rpos[r] - n0 + 1, 0, nk) : nk;
      if (vis == 0) {
        std::fill(s, s + BK, 0.f);
        continue;
      }
      float tmax = mx[r];
      int c = 0;
      vf vmax = splat(tmax);
      for (; c + W <= vis; c += W) {
        const vf x = load(s + c);
        vmax = x > vmax ? x : vmax;
      }
      for (int j = 0; j < W; ++j) tmax = std::max(tmax, vmax[j]);
      for (; c < vis; ++c) tmax = std::max(tmax, s[c]);
      const float alpha = std::exp2(mx[r] - tmax);
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
      sum[r] = sum[r] * alpha + l;
      mx[r] = tmax;
      if (alpha != 1.f)
        for (int d = 0; d < D; ++d) O[r * D + d] *= alpha;
    }
    pv_tile<D>(S, vh + n0 * a.s_vn, a.s_vn, rows, nk, O);
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

template <int D>
void run(const Args& a, int64_t n_kv, int threads) {
  const int64_t blocks = (a.m + a.bq - 1) / a.bq, tasks = n_kv * blocks;
  // Later blocks read more keys: hand tasks out longest first, round-robin by thread.
  auto work = [&](int t) {
    std::vector<float> buf;
    for (int64_t k = t; k < tasks; k += threads) {
      const int64_t blk = blocks - 1 - k / n_kv, kvh = k % n_kv;
      run_task<D>(a, kvh, blk, buf);
    }
  };
  if (threads <= 1) {
    work(0);
    return;
  }
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" int sparse_attention_f32(const float* q, const float* kt, const float* v, float* out, const int64_t* pos,
                                    int64_t n_heads, int64_t n_kv, int64_t m, int64_t d, int64_t kv_len, int64_t bq,
                                    int64_t s_qh, int64_t s_qm, int64_t s_kth, int64_t s_ktd, int64_t s_vh,
                                    int64_t s_vn, int64_t s_oh, int64_t s_om, float scale, int threads) {
  if (n_kv <= 0 || n_heads % n_kv || m <= 0 || bq <= 0) return 1;
  Args a{q, kt, v, out, pos, m, n_heads / n_kv, bq, kv_len, s_qh, s_qm, s_kth, s_ktd, s_vh, s_vn, s_oh, s_om,
         scale * 1.4426950408889634f};
  if (d == 64) run<64>(a, n_kv, threads);
  else if (d == 128) run<128>(a, n_kv, threads);
  else return 2;
  return 0;
}
