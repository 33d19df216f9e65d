#!/bin/bash
# benchmarks/ml-1m.yaml (or SPEC) on one GPU, every (model, seed) run as its own harness process, JOBS of
# them at once. The processes share the GPU through CUDA MPS when it can be started: without it
# they time-slice the GPU and each runs several times slower. RecBole's data loading is per
# process and single-threaded, so give each running job a CPU core; each took about 2 GB of
# GPU memory.
#
#   bash benchmarks/ml-1m-gpu.sh [--set KEY=VALUE ...]          # all 7 models x 5 seeds
#   MODELS="SASRec LLMSASRec BiFairSASRec" SEEDS="2020 2021 2022" \
#       bash benchmarks/ml-1m-gpu.sh --set epochs=3                # the table in results/ml-1m
#
# The --set options go to every run and to the report. ml-1m is prepared by the first run that
# needs it (the others wait for it). Runs finished earlier with the same settings are skipped,
# as with any harness command. Exits non-zero if a run failed; Ctrl-C stops every run.
set -u
cd "$(dirname "$0")/.."
MODELS=${MODELS:-SASRec LLMSASRec IPSSASRec GroupDROSASRec VarRegSASRec LLMSASRec+rerank BiFairSASRec}
SEEDS=${SEEDS:-2020 2021 2022 2023 2024}
JOBS=${JOBS:-9}
OUTPUT=${OUTPUT:-results/ml-1m}
SPEC=${SPEC:-benchmarks/ml-1m.yaml}
PYTHON=${PYTHON:-python}   # the interpreter with the plugin installed
settings="MODELS=\"$MODELS\" SEEDS=\"$SEEDS\""
[ "$SPEC" != benchmarks/ml-1m.yaml ] && settings="SPEC=$SPEC $settings"
[ "$OUTPUT" != results/ml-1m ] && settings="OUTPUT=$OUTPUT $settings"
export RECBOLE_BIFAIR_COMMAND="$settings bash benchmarks/ml-1m-gpu.sh $*"
export OMP_NUM_THREADS=1
for option in "$@"; do
  case "$option" in
    --models*|--seeds*|--datasets*|--output_dir*|--report-only) echo "Use MODELS, SEEDS and OUTPUT instead of $option." >&2; exit 2;;
  esac
done

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
exit $status
