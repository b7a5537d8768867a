#!/usr/bin/env bash
# The whole demo-model recipe, in order: corpus -> base model -> export -> adapters -> table.
# Usage: recipes/make_demo.sh [DATA_DIR]   (default /work/data; the corpus is not committed)
# On 2 CPU cores: ~14 min corpus (12.7 h of audio), 80 + 90 + 95 min base training (three wall-clock budgets: from
# scratch, then twice continued from the last model with a fresh warm-up and cosine), ~2 min per adapter, ~10 min
# evaluation.
# Run from the repository root with the venv active (or .venv/bin on PATH).
set -euo pipefail
DATA=${1:-/work/data}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH"
python -m pip install -q -e ".[export,recipes]"              # NeMo for training, pocketsphinx for the table

brogue corpus --out "$DATA" --seed 0
python recipes/train_base.py --data "$DATA" --out model_repo/demo.nemo --minutes 80 --batch-size 16 --lr 2e-3 \
  --warmup 300 --vocab char --subsampling 4
python recipes/train_base.py --data "$DATA" --out model_repo/demo.nemo --init model_repo/demo.nemo --minutes 90 \
  --batch-size 16 --lr 1.5e-3 --warmup 200
python recipes/train_base.py --data "$DATA" --out model_repo/demo.nemo --init model_repo/demo.nemo --minutes 95 \
  --batch-size 16 --lr 5e-4 --warmup 200
rm -rf model_repo/exported/demo
brogue export model_repo/demo.nemo --out model_repo/exported/demo --name demo
rm -rf model_repo/adapters/{scottish,caribbean,indian,german,medical}/v1  # trained for the old base
for entry in scottish:accent caribbean:accent indian:accent german:accent medical:domain; do
  s=${entry%%:*}
  brogue adapt --model model_repo/demo.nemo --train "$DATA/${s}_train.json" --name "$s" --kind "${entry#*:}" \
    --steps 150 --batch-size 16 --lr 3e-3 --replay "$DATA/base_train.json" --replay-fraction 0.5 \
    --store model_repo/adapters --version v1
done
python recipes/report.py --data "$DATA"                      # README table + recipes/accuracy.json
python recipes/check_streaming.py --nemo model_repo/demo.nemo --model-dir model_repo/exported/demo \
  --manifest "$DATA/base_test.json" --limit 40 --json recipes/streaming_parity.json
python recipes/test_clips.py --data "$DATA"                  # tests/data/demo
