#!/usr/bin/env bash
# Reproduce rows of the CIFAR-100 distillation table with kd-train, then tabulate every run beside the
# published numbers (scripts/collect_cifar100.py). The pair facts (teacher, student, published numbers,
# DKD beta, lr) live in conf/pair/<pair>.yaml only; each row is one multirun over distill=.
#
# Usage: scripts/reproduce_cifar100.sh [PAIR ...] [-- extra kd-train overrides for every run]
#   PAIR: a file name of conf/pair/ (default: all of them)
# Environment:
#   METHODS  comma-separated methods (default "kd,fitnet,at,rkd,crd,dkd"); the first also trains the baseline
#   SEEDS    one full set of runs per seed (default "42"); the table shows mean ± std
#   OUT      where the runs and table.md go (default outputs/cifar100_reproduce)
#   DRY_RUN  set to 1 to print the commands without running them
# Example: scripts/reproduce_cifar100.sh resnet32x4_resnet8x4 -- data.num_workers=8
#
# Teachers are trained once per seed and reused through kd-train's teacher cache. MobileNet/ShuffleNet
# pairs train their students at lr 0.01 but take the lr-0.05 teacher of the pair with the same teacher
# (teacher.ckpt_path from that run's summary.json), so run such a pair after one of those.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=()
EXTRA=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == -- ]]; then shift; EXTRA=("$@"); break; fi
  [[ -f conf/pair/$1.yaml ]] || { echo "reproduce_cifar100: unknown pair '$1'; see conf/pair/" >&2; exit 2; }
  PAIRS+=("$1"); shift
done
if [[ ${#PAIRS[@]} -eq 0 ]]; then
  for f in conf/pair/*.yaml; do PAIRS+=("$(basename "$f" .yaml)"); done
fi
METHODS=${METHODS:-"kd,fitnet,at,rkd,crd,dkd"}
SEEDS=${SEEDS:-42}
OUT=${OUT:-outputs/cifar100_reproduce}
KD_TRAIN=${KD_TRAIN:-$( [[ -x .venv/bin/kd-train ]] && echo .venv/bin/kd-train || echo kd-train )}
PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python )}

run() {  # run DIR OVERRIDES...: kd-train writing into DIR, unless it finished before
  local dir=$1; shift
  if [[ -f $dir/summary.json || -f $dir/sweep_summary.csv ]]; then echo "== done already: $dir"; return 0; fi
  echo "== $KD_TRAIN $* ${EXTRA[*]}"
  [[ ${DRY_RUN:-0} == 1 ]] && return 0
  if [[ $1 == -m ]]; then $KD_TRAIN "$@" "${EXTRA[@]}" "hydra.sweep.dir=$dir"
  else $KD_TRAIN "$@" "${EXTRA[@]}" "hydra.run.dir=$dir"; fi
}

for seed in $SEEDS; do
  for pair in "${PAIRS[@]}"; do
    first=${METHODS%%,*}
    rest=${METHODS#"$first"}; rest=${rest#,}
    args=("pair=$pair" "recipe=cifar100" "seed=$seed")
    lr=$("$PYTHON" -c 'import sys, yaml; print(((yaml.safe_load(open(sys.argv[1])).get("optim") or {}).get("optimizer") or {}).get("lr", ""))' "conf/pair/$pair.yaml")
    if [[ -n $lr ]]; then  # a small-lr student: reuse the teacher trained at the recipe's lr
      teacher=${pair%%_*}
      ckpt=$(ls "$OUT"/seed"$seed"/"$teacher"_*/"$first"/summary.json 2>/dev/null | grep -v "/${pair}/" | head -1 || true)
      [[ -n $ckpt ]] && args+=("teacher.ckpt_path=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["teacher"]["ckpt_path"])' "$ckpt")")
    fi
    run "$OUT/seed$seed/$pair/$first" "${args[@]}" "distill=$first"
    [[ -n $rest ]] && run "$OUT/seed$seed/$pair/rest" -m "${args[@]}" "distill=$rest" "baseline.enabled=false"
  done
done

if [[ ${DRY_RUN:-0} != 1 ]]; then
  "$PYTHON" scripts/collect_cifar100.py "$OUT" --output "$OUT/table.md"
  echo "== table written to $OUT/table.md"
fi
