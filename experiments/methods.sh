#!/usr/bin/env bash
# The latent-reasoning family at laptop scale, on the embedded model and task (docs/methods.md): GRPO, HRPO and
# each mode that trains by RL (SofT-GRPO's Gumbel soft tokens, Soft Tokens Hard Truths' Gaussian ones, Mixture
# of Inputs, Multiplex Thinking), 3 seeds each, with baselines.sh's budget: STEPS steps of PROMPTS prompts x 4
# completions, the quick-start preset otherwise (T = 1, top-k 50: one sampling setting for every method), then
# a greedy evaluation in the run's own mode on EVAL_LIMIT problems of the test split (it shares no problem with
# training), and for the soft-token runs a second one with plain tokens ("train soft, infer hard"). The
# training-free modes (Soft Thinking, Mixture of Inputs, Stochastic Soft Thinking's Gumbel soft tokens) are
# evaluated on the base model on the same problems. docs/results.md has the measured run and its wall time, as
# two one-thread processes:
#   OMP_NUM_THREADS=1 METHODS="grpo gumbel mixture" bash experiments/methods.sh &
#   OMP_NUM_THREADS=1 METHODS="gaussian multiplex base hrpo" bash experiments/methods.sh &
#   wait; bash experiments/methods.sh     # finished runs are skipped: writes compare.md, summary.md, plots/
set -euo pipefail
OUT=${OUT:-runs/methods}
STEPS=${STEPS:-10}
PROMPTS=${PROMPTS:-4}
SEEDS=${SEEDS:-"1 2 3"}
METHODS=${METHODS:-"grpo hrpo gumbel gaussian mixture multiplex base"}
EVAL_LIMIT=${EVAL_LIMIT:-100}
EVAL=(--task arithmetic --limit "$EVAL_LIMIT" --batch-size 50 --max-new-tokens 32 --quiet)

run() {  # run METHOD SEED ARGS...: one hrpo train into $OUT/METHOD-sSEED, unless it finished earlier
  local method=$1 seed=$2
  shift 2
  local dir="$OUT/$method-s$seed"
  [ -f "$dir/checkpoint-$STEPS/trainer_state.pt" ] && return 0
  rm -rf "$dir"  # an unfinished earlier attempt: start it again
  hrpo train "$@" --seed "$seed" --max-steps "$STEPS" --save-every "$STEPS" --prompts-per-step "$PROMPTS" \
    --output-dir "$dir" --run-name "$method" --eval-task arithmetic --eval-every "$STEPS" \
    --eval-limit "$EVAL_LIMIT" --quiet
  echo "done $dir ($(date +%T))"
}

infer_hard() {  # infer_hard METHOD SEED: the trained adapter decoded with plain tokens
  local dir="$OUT/$1-s$2"
  [ -f "$dir/hard/eval_arithmetic.json" ] && return 0
  hrpo eval --adapter "$dir" --infer hard --output-dir "$dir/hard" "${EVAL[@]}" > /dev/null
}

base_eval() {  # base_eval NAME ARGS...: the base model (no adapter) in a training-free mode
  local dir="$OUT/base/$1"
  shift
  [ -f "$dir/eval_arithmetic.json" ] && return 0
  hrpo eval "$@" --output-dir "$dir" "${EVAL[@]}" > /dev/null
  echo "done $dir ($(date +%T))"
}

for method in $METHODS; do
  if [ "$method" = base ]; then
    base_eval discrete --mode discrete
    base_eval soft --mode soft
    base_eval mixture --mode mixture
    for seed in $SEEDS; do  # sampled at T = 0.5: plain tokens against Gumbel soft tokens (tau 0.5)
      base_eval "discrete-t0.5-s$seed" --mode discrete --temperature 0.5 --seed "$seed"
      base_eval "gumbel-t0.5-s$seed" --mode soft --latent noise=gumbel --latent gumbel_tau=0.5 --temperature 0.5 \
        --seed "$seed"
    done
    continue
  fi
  for seed in $SEEDS; do
    case $method in
      grpo) run grpo "$seed" --mode discrete ;;
      hrpo) run hrpo "$seed" --mode hybrid ;;
      gumbel) run gumbel "$seed" --mode soft --latent noise=gumbel && infer_hard gumbel "$seed" ;;
      gaussian) run gaussian "$seed" --mode soft --latent noise=gaussian && infer_hard gaussian "$seed" ;;
      mixture) run mixture "$seed" --mode mixture ;;
      multiplex) run multiplex "$seed" --mode multiplex ;;
      *) echo "unknown method $method (grpo hrpo gumbel gaussian mixture multiplex base)" >&2; exit 2 ;;
    esac
  done
done
[ -n "${METHODS_ONLY:-}" ] && exit 0
ls "$OUT"/*-s*/checkpoint-"$STEPS"/trainer_state.pt > /dev/null  # every run finished
hrpo compare "$OUT"/*-s* --out "$OUT/compare.md" > /dev/null
hrpo plot "$OUT"/*-s* --group-by run_name --out "$OUT/plots" > /dev/null
python "$(dirname "$0")/summarize.py" "$OUT" --by run_name --order grpo,hrpo,gumbel,gaussian,mixture,multiplex \
  --window 3 > "$OUT/summary.md"
python "$(dirname "$0")/summarize.py" "$OUT" --inference-table >> "$OUT/summary.md"
cat "$OUT/summary.md"
