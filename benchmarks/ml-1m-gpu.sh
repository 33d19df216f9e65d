#!/bin/bash
# benchmarks/ml-1m.yaml on one GPU, every (model, seed) run as its own harness process, all at
# once. The processes share the GPU through CUDA MPS when it can be started: without it they
# time-slice the GPU and each runs several times slower. RecBole's data loading is per process
# and single-threaded, so give it a CPU core per run.
#
#   bash benchmarks/ml-1m-gpu.sh [--set KEY=VALUE ...]          # all 7 models x 5 seeds
#   MODELS="SASRec LLMSASRec BiFairSASRec" SEEDS="2020 2021 2022" \
#       bash benchmarks/ml-1m-gpu.sh --set epochs=3                # the table in results/ml-1m
#
# ml-1m must be prepared first (python run_recbole_bifair.py --prepare=ml-1m ..., README
# "Datasets"); the --set options go to every run and to the report. Runs finished earlier with
# the same settings are skipped, as with any harness command.
set -u
MODELS=${MODELS:-SASRec LLMSASRec IPSSASRec GroupDROSASRec VarRegSASRec LLMSASRec+rerank BiFairSASRec}
SEEDS=${SEEDS:-2020 2021 2022 2023 2024}
OUTPUT=${OUTPUT:-results/ml-1m}
SPEC=benchmarks/ml-1m.yaml
mps=0
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  mps=1
else
  echo "CUDA MPS not started: the runs time-slice the GPU (slower)." >&2
fi
mkdir -p "$OUTPUT/logs"
for seed in $SEEDS; do
  for model in $MODELS; do
    OMP_NUM_THREADS=1 python -m recbole_bifair.benchmark "$SPEC" --models "$model" --seeds "$seed" \
      --output_dir "$OUTPUT" "$@" > "$OUTPUT/logs/harness_${model}_${seed}.txt" 2>&1 &
  done
done
wait
[ "$mps" = 1 ] && echo quit | nvidia-cuda-mps-control
python -m recbole_bifair.benchmark "$SPEC" --report-only --output_dir "$OUTPUT" "$@"
