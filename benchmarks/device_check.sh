#!/bin/bash
# The checks that need a GPU, as one command for a lent device machine (CUDA, python3 with torch, transformers and
# triton; no package index). What it runs, each writing its log and JSON under $OUT:
#   1. the `cuda` tests (tests/blend/test_blend_cuda.py) with Triton compiled, not interpreted;
#   2. every Triton kernel compiled on the device against its torch reference (benchmarks/gpu_kernels_check.py);
#   3. what a decode step with decode-time correction costs over a 6,000-token cache, in bf16, on the default
#      model's shape with random weights (the model itself cannot be fetched there; a step's time does not depend
#      on its weights): benchmarks/decode_correction_cost.py;
#   4. each Triton kernel's time against its torch reference and SDPA, with bandwidth and TFLOP/s against the
#      device's peak (`chunkcache bench kernels`, BENCHMARKS.md "Triton kernels": the GPU figures still open).
# The package's pure-Python needs that the device image lacks travel as wheels in .whl/ (fetch them here first):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 cachetools==8.0.2        (the venv's versions; 2.8 MB)
# then: device run, carry [".whl"], command "bash benchmarks/device_check.sh", timeout_s 590 (its steps: 550 s at most).
set -o pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
rc=0
CHUNKCACHE_TRITON_COMPILED=1 timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda \
  tests/blend/test_blend_cuda.py 2>&1 | tee "$OUT/cuda_tests.log" || rc=1
timeout 90 python3 benchmarks/gpu_kernels_check.py --json "$OUT/gpu_kernels.json" 2>&1 \
  | tee "$OUT/gpu_kernels.log" || rc=1
timeout 150 python3 benchmarks/decode_correction_cost.py --device cuda --random-weights --context 6000 \
  --ks 256,1024,2048,3000 --repeats 10 --json "$OUT/dc_step_cost_6000_cuda.json" 2>&1 | tee "$OUT/dc_cost.log" || rc=1
timeout 110 python3 -m chunkcache bench kernels --out "$OUT/kernels_cuda.json" 2>&1 | tee "$OUT/kernels_bench.log" || rc=1
exit $rc
