#!/usr/bin/env bash
# Runs benchmarks/gpu_suite.py on a bare GPU machine that reaches no package registry.
#
# The machine already has torch, PyG, timm, torchmetrics, tqdm, matplotlib, safetensors; what
# it lacks (pycocotools) travels as wheels in .whl/ (fetch them here with
# benchmarks/fetch_gpu_wheels.sh). Nothing is reinstalled: the wheels go to /tmp/site and the
# project is used from this checkout through PYTHONPATH. The set-up time is recorded in the
# results. Arguments go to gpu_suite.py; with $OUT set, the results come back as one archive.
#
#   bash benchmarks/gpu_suite.sh [--budget-s 420] [--parts tests,layers,model,train]
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s.%N)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
python3 -c "import agcn_pyg, pycocotools, torch; print('agcn_pyg', agcn_pyg.__version__, \
'torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 1
setup=$(python3 -c "import time; print(round(time.time() - $start, 1))")
echo "set-up: ${setup} s"
archive=()
[ -n "${OUT:-}" ] && archive=(--archive "$OUT/gpu-suite.tar.gz")
python3 benchmarks/gpu_suite.py --setup-seconds "$setup" "${archive[@]}" "$@"
