#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a short slot on a bare CUDA machine without network access.
# Installs only wheels carried in .whl/ (PyAV), then prints each table; results land in benchmarks/results/
# and, when $OUT is set (the device tool), are copied there.
#   bash benchmarks/gpu.sh [quick]
set -u
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
out=${OUT:-benchmarks/results}
mkdir -p "$out" benchmarks/results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, av, os; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', \
torch.backends.cudnn.version(), 'av', av.__version__, 'cpus', os.cpu_count())"
step() {  # step SECONDS NAME COMMAND...: run with a time limit, keep the log, never stop the script
  local limit=$1 name=$2; shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "benchmarks/results/$name.log" 2>&1
  echo "--- $name exit $? after $((SECONDS - t0)) s"
  grep -vE "Warning|warn\(|^\s*$" "benchmarks/results/$name.log" | tail -n 40
}
step 200 model python3 benchmarks/bench_model.py --device cuda --full-size --compile --warmup 3 --iters 10
step 60 decode python3 benchmarks/bench_decode.py
step 120 extract python3 benchmarks/bench_extract.py --device cuda --full-size --videos 96 --frames 190 \
  --workers 14 --batch-size 128
step 300 e2e python3 benchmarks/bench_e2e.py --device cuda --videos 1200 --workers 14
cat benchmarks/results/*.md > "$out/tables.md" 2>/dev/null
cat benchmarks/results/*.log > "$out/logs.txt" 2>/dev/null
cp benchmarks/results/*.json "$out/" 2>/dev/null
true
