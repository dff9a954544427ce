#!/usr/bin/env bash
# Start the service on the embedded defaults: SQLite store and local index in the data dir (var/ unless
# XINFANG_DATA_DIR says otherwise), demo models trained on datasets/demo (tiny recipe; the channel its text-only
# default) when missing, the demo petitions loaded (idempotent), then `xinfang serve` in the foreground. Extra
# arguments go to `xinfang serve` (e.g. --port 8080, --runtime torch). Create a key in another shell, see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/xinfang ]; then
  bash scripts/setup.sh  # virtualenv, CPU torch, pip install -e ., encoder conversion
fi
X=.venv/bin/xinfang
$X encoder prepare >/dev/null
DATA="${XINFANG_DATA_DIR:-var}"
MODELS="$DATA/models"
DEMO=datasets/demo
for task in topic department channel; do
  # (re)train when missing or of the old format (a full encoder copy; current bundles are xinfang-classifier/2)
  if ! grep -qs '"xinfang-classifier/2"' "$MODELS/$task-demo/config.json"; then
    recipe=tiny; [ "$task" = channel ] && recipe=auto  # the channel default: text-only, seconds
    echo "training the demo $task model ($recipe recipe, about a minute)..." >&2
    nice -n 5 $X train --task "$task" --data "$DEMO/petitions.jsonl" --recipe "$recipe" --out "$MODELS/$task-demo"
  fi
done
if [ ! -f "$MODELS/repeat-scorer.json" ]; then
  echo "fitting the demo repeat scorer..." >&2
  $X repeats train-scorer --pairs "$DEMO/repeat_pairs.jsonl" --petitions "$DEMO/petitions.jsonl" \
    --out "$MODELS/repeat-scorer.json"
fi
export XINFANG_DUTY_LIST="${XINFANG_DUTY_LIST:-$DEMO/duty_list.yaml}"
echo "loading the demo petitions into the store and index..." >&2
.venv/bin/python -m xinfang.serving.bulk "$DEMO/petitions.jsonl"
exec $X serve "$@"
