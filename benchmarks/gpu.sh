#!/usr/bin/env bash
# Every GPU measurement of latentlens in one go: one table, appended to benchmarks/RESULTS.md.
#
#   benchmarks/gpu.sh            # on the GPU machine (bf16, 28 steps, 1024², SD3-medium and Flux.1-dev size)
#   benchmarks/gpu.sh --quick    # a smoke run on any machine (CPU too); touches no results file
#
# The GPU machine has torch but neither diffusers, zarr nor nnsight, and no network: their wheels travel in
# .whl/ (git-ignored). Fetch them once, where pip has an index, with:  benchmarks/gpu.sh --fetch-wheels
# Extra arguments go to benchmarks/bench_gpu.py (e.g. --reps 3, --flux-single-layers 19).
# Through a lent machine whose files come back from $OUT (carry .whl), keep what it measured even if stopped:
#   bash benchmarks/gpu.sh --json-out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log; cp benchmarks/RESULTS.md $OUT/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(diffusers==0.42.1 zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
        importlib_metadata==10.2.0 nnsight==0.8.1 greenlet==3.5.6 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 websocket-client==1.9.2
        zstandard==0.25.0)
TEST_WHEELS=(transformers==5.24.0 pytest==9.2.0)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${WHEELS[@]}"
  # The CUDA exactness tests (tests/probing/test_cuda.py) build tiny real pipelines: transformers and pytest,
  # with their dependencies (neither needs torch), at the project's pinned versions.
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -c constraints.txt -d .whl "${TEST_WHEELS[@]}"
  rm -f .whl/numpy-*.whl .whl/hf_xet-*.whl  # the device's torch brings numpy; nothing is downloaded there
  ls .whl
  du -sh .whl  # the device tool carries at most 64 MiB in all
  exit 0
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import diffusers, zarr, transformers, pytest" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu.sh: diffusers/zarr are missing and .whl/ holds no wheels; run 'benchmarks/gpu.sh --fetch-wheels' first." >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ll-site .whl/*.whl
  export PYTHONPATH="/tmp/ll-site:$PYTHONPATH"
fi
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU', '| torch', torch.__version__)"
"$PY" -c "from latentlens import compat; print('private APIs:', compat.report())"
# Exactness first (skipped without CUDA): sites equal plain hooks, maps equal the float64 reference,
# images equal an unrecorded run, copies asynchronous. A failure is reported, and the timings still run.
if "$PY" -m pytest -q -p no:cacheprovider tests/probing/test_cuda.py; then
  echo "CUDA exactness tests: passed"
else
  echo "CUDA exactness tests: FAILED (see above); the timings below are not verified" >&2
fi
"$PY" benchmarks/bench_gpu.py --append benchmarks/RESULTS.md "$@"
