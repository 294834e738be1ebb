#!/usr/bin/env bash
# The paper's mode comparison at laptop scale: hybrid (HRPO), discrete (GRPO), latent and hidden ablations,
# 3 seeds each, same budget, on the embedded model and task. About 30-60 min on 2 CPU cores (31 min as two one-thread processes, docs/results.md).
#   bash experiments/modes.sh            # STEPS=20 OUT=runs/modes by default
# Then: runs/modes/compare.md, runs/modes/summary.md and runs/modes/plots/*.png
set -euo pipefail
OUT=${OUT:-runs/modes}
STEPS=${STEPS:-20}
SEEDS=${SEEDS:-"1 2 3"}
MODES=${MODES:-"hybrid discrete latent hidden"}
for seed in $SEEDS; do
  for mode in $MODES; do
    dir="$OUT/$mode-s$seed"
    [ -f "$dir/checkpoint-$STEPS/trainer_state.pt" ] && continue  # finished earlier
    hrpo train --mode "$mode" --seed "$seed" --max-steps "$STEPS" --save-every "$STEPS" --output-dir "$dir" \
      --eval-task arithmetic --eval-every "$STEPS" --eval-limit 100 --quiet
    echo "done $dir"
  done
done
hrpo compare "$OUT"/*-s* --out "$OUT/compare.md" > /dev/null
hrpo plot "$OUT"/*-s* --out "$OUT/plots" > /dev/null
python "$(dirname "$0")/summarize.py" "$OUT" > "$OUT/summary.md"
cat "$OUT/summary.md"
