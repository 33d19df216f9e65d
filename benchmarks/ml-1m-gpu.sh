#!/bin/bash
# A benchmark spec on one GPU, every (model, seed) run as its own harness process, JOBS of them
# at once: by default SASRec, LLMSASRec and BiFairSASRec x 3 seeds of benchmarks/ml-1m-converged.yaml,
# to early stopping. The processes share the GPU through CUDA MPS when it can be started: without
# it they time-slice the GPU and each runs several times slower. Give each running job a CPU core.
#
#   bash benchmarks/ml-1m-gpu.sh [--set KEY=VALUE ...]
#   SPEC=benchmarks/ml-1m.yaml OUTPUT=results/ml-1m MODELS="SASRec LLMSASRec BiFairSASRec" \
#       SEEDS="2020 2021 2022" bash benchmarks/ml-1m-gpu.sh --set epochs=3    # the 3-epoch table
#
# On a machine without network, RecBole or the text encoder: the archive of
# benchmarks/ml-1m-gpu-pack.sh (ARCHIVE, default .gpu-carry/ml-1m-gpu.tar.gz) gives the ml-1m
# files and item vectors (unpacked into dataset/ml-1m when missing) and RecBole's pure-Python
# wheels (installed into a temporary folder when `import recbole` fails), and with numpy 2
# RecBole's removed numpy aliases are restored there (RecBole 1.2.1 reads np.float_).
#
# The --set options go to every run and to the report. Runs finished earlier with the same
# settings are skipped, and a run cut off continues from its last finished epoch, as with any
# harness command (carry the output folder back to resume). At the end each run's epochs and
# seconds per training epoch are printed. Exits non-zero if a run failed; Ctrl-C or TERM stops
# every run and keeps what they saved.
set -u
cd "$(dirname "$0")/.."
MODELS=${MODELS:-SASRec LLMSASRec BiFairSASRec}
SEEDS=${SEEDS:-2020 2021 2022}
JOBS=${JOBS:-9}
OUTPUT=${OUTPUT:-results/ml-1m-converged}
SPEC=${SPEC:-benchmarks/ml-1m-converged.yaml}
PYTHON=${PYTHON:-python}   # the interpreter with the plugin installed (or with torch, and the archive)
ARCHIVE=${ARCHIVE:-.gpu-carry/ml-1m-gpu.tar.gz}
settings="MODELS=\"$MODELS\" SEEDS=\"$SEEDS\""
[ "$SPEC" != benchmarks/ml-1m-converged.yaml ] && settings="SPEC=$SPEC $settings"
[ "$OUTPUT" != results/ml-1m-converged ] && settings="OUTPUT=$OUTPUT $settings"
export RECBOLE_BIFAIR_COMMAND="$settings bash benchmarks/ml-1m-gpu.sh $*"
export OMP_NUM_THREADS=1
for option in "$@"; do
  case "$option" in
    --models*|--seeds*|--datasets*|--output_dir*|--report-only) echo "Use MODELS, SEEDS and OUTPUT instead of $option." >&2; exit 2;;
  esac
done

if [ -f "$ARCHIVE" ]; then
  [ -e dataset/ml-1m/ml-1m.inter ] || { mkdir -p dataset && tar -xzf "$ARCHIVE" -C . dataset/ml-1m; }
  if ! "$PYTHON" -c "import recbole" 2>/dev/null; then
    site=$(mktemp -d)
    tar -xzf "$ARCHIVE" -C "$site" wheels
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site/lib" "$site"/wheels/*.whl || exit 2
    cat > "$site/lib/sitecustomize.py" <<'PY'
import numpy as np  # RecBole 1.2.1 reads aliases that numpy 2 removed
for old, new in (("float_", "float64"), ("complex_", "complex128"), ("unicode_", "str_")):
    if not hasattr(np, old):
        setattr(np, old, getattr(np, new))
PY
    export PYTHONPATH="$site/lib:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$PYTHON" -c "import recbole, recbole_bifair" || { echo "RecBole or the plugin cannot be imported." >&2; exit 2; }

mps=0
export CUDA_MPS_PIPE_DIRECTORY=$(mktemp -d) CUDA_MPS_LOG_DIRECTORY=$(mktemp -d)
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  mps=1
else
  echo "CUDA MPS not started: the runs time-slice the GPU (slower)." >&2
fi
# each job in its own process group, so that stopping it also stops the run it started
set -m
status=0
stop() {  # the running jobs only: a finished job's number may belong to another process by now
  for pid in $(jobs -rp); do kill -TERM -- "-$pid" 2>/dev/null; done
  [ "$mps" = 1 ] && echo quit | nvidia-cuda-mps-control
  mps=0
}
trap 'stop; exit 130' INT TERM
trap stop EXIT
reap_one() {  # waits for one job; false once none is left
  wait -n; local code=$?
  [ $code -eq 127 ] && return 1
  [ $code -ne 0 ] && status=1
  return 0
}

mkdir -p "$OUTPUT/logs"
for seed in $SEEDS; do
  for model in $MODELS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do reap_one || break; done
    "$PYTHON" -m recbole_bifair.benchmark "$SPEC" "$@" --models "$model" --seeds "$seed" \
      --output_dir "$OUTPUT" > "$OUTPUT/logs/harness_${model}_${seed}.txt" 2>&1 &
  done
done
while reap_one; do :; done
"$PYTHON" -m recbole_bifair.benchmark "$SPEC" "$@" --report-only --output_dir "$OUTPUT"
"$PYTHON" - "$OUTPUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "runs", "*.json"))):
    record = json.load(open(path))
    print(f"{record.get('run_id')}: {record.get('status')}, {record.get('epochs')} epochs (best {record.get('best_epoch')}), "
          f"{record.get('train_epoch_seconds') or 0:.1f} s per training epoch, {record.get('wall_seconds') or 0:.0f} s in all")
PY
exit $status
