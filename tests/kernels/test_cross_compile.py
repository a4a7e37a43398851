"""The C++ attention kernel's AArch64 (NEON) build: cross-compiled, then run under qemu-user against a float64
reference written in the driver. Needs Debian's g++-aarch64-linux-gnu (and qemu-user to run); skipped without."""

import shutil
import subprocess

import pytest

from chunkcache.kernels._cpp import CSRC, FLAGS

CROSS = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")

DRIVER = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>
extern "C" int sparse_attention_f32(const float*, const float*, const float*, float*, const int64_t*, int64_t, int64_t,
    int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, float,
    int);
extern "C" int sparse_attention_vector_width();
int main() {
  const int64_t H = 6, KV = 2, D = 64, N = 300, m = 70, bq = 16;
  std::mt19937 gen(0);
  std::normal_distribution<float> nd;
  std::vector<float> q(H * m * D), k(KV * N * D), v(KV * N * D), kt(KV * D * N), out(H * m * D);
  for (auto* x : {&q, &k, &v}) for (auto& f : *x) f = nd(gen);
  std::vector<int64_t> pos;
  for (int64_t p = 3; (int64_t)pos.size() < m; p += 4) pos.push_back(p);  // sorted, scattered
  for (int64_t h = 0; h < KV; ++h)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) kt[(h * D + d) * N + n] = k[(h * N + n) * D + d];
  const float scale = 0.125f;
  int rc = sparse_attention_f32(q.data(), kt.data(), v.data(), out.data(), pos.data(), H, KV, m, D, N, bq, m * D, D,
                                D * N, N, N * D, D, m * D, D, scale, 2);
  double err = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < m; ++i) {
      const int64_t kh = h / (H / KV);
      std::vector<double> s(pos[i] + 1);
      double mx = -1e300, sum = 0;
      for (int64_t n = 0; n <= pos[i]; ++n) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += (double)q[(h * m + i) * D + d] * k[(kh * N + n) * D + d];
        s[n] = dot * scale;
        mx = std::fmax(mx, s[n]);
      }
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t n = 0; n <= pos[i]; ++n) o += s[n] / sum * v[(kh * N + n) * D + d];
        err = std::fmax(err, std::fabs(o - out[(h * m + i) * D + d]));
      }
    }
  std::printf("rc=%d width=%d maxerr=%g\n", rc, sparse_attention_vector_width(), err);
  return rc != 0 || err > 2e-5;
}
"""


@pytest.mark.skipif(CROSS is None, reason="no aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)")
def test_aarch64_build_compiles_and_matches_float64(tmp_path):
    driver = tmp_path / "driver.cpp"
    driver.write_text(DRIVER)
    exe = tmp_path / "attention-aarch64"
    flags = [f for f in FLAGS if f not in ("-shared", "-fPIC")]
    subprocess.run([CROSS, "-march=armv8-a", *flags, "-static", str(CSRC / "sparse_attention_cpu.cpp"), str(driver),
                    "-o", str(exe)], check=True, capture_output=True, timeout=300)
    if QEMU is None:
        pytest.skip("built for AArch64; no qemu-aarch64 to run it (apt-get install qemu-user)")
    res = subprocess.run([QEMU, str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "width=4" in res.stdout  # NEON: 4 floats per vector
