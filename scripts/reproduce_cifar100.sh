#!/usr/bin/env bash
# Reproduce rows of the CIFAR-100 distillation table (REFERENCE.md) with kd-train, then tabulate
# every run's summary.json (student.acc) beside the published numbers (scripts/collect_cifar100.py).
#
# Usage: scripts/reproduce_cifar100.sh [PAIR ...] [-- extra kd-train overrides for every run]
#   PAIR: resnet32x4_resnet8x4 wrn_40_2_wrn_16_2 resnet56_resnet20 vgg13_vgg8 resnet32x4_ShuffleV2
#         (default: all five)
# Environment:
#   METHODS  methods per pair (default "kd fitnet at rkd crd dkd"); each is experiment=cifar100_<pair>_<method>
#   SEEDS    one full set of runs per seed (default "42"); the table shows mean ± std
#   OUT      where the runs and table.md go (default outputs/cifar100_reproduce)
#   KD_TRAIN the training command (default: kd-train, or .venv/bin/kd-train when present)
#   DRY_RUN  set to 1 to print the commands without running them
# Examples:
#   scripts/reproduce_cifar100.sh resnet32x4_resnet8x4                    # one row, ~7 GPU runs of 240 epochs
#   METHODS="kd dkd" scripts/reproduce_cifar100.sh -- data.num_workers=8
#   DRY_RUN=1 scripts/reproduce_cifar100.sh -- trainer.max_epochs=1       # see what would run
#
# Each pair's first method trains the teacher (kept in kd-train's teacher cache) and the labels-only
# baseline; the other methods reuse that teacher through teacher.ckpt_path and skip the baseline. The
# resnet32x4 -> ShuffleV2 row trains its students with lr 0.01 but reuses the lr-0.05 resnet32x4 teacher
# (from the resnet32x4_resnet8x4 row, or experiment=cifar100_teacher_resnet32x4). Finished runs (with a
# summary.json) are skipped, so an interrupted reproduction resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_PAIRS=(resnet32x4_resnet8x4 wrn_40_2_wrn_16_2 resnet56_resnet20 vgg13_vgg8 resnet32x4_ShuffleV2)
declare -A TEACHER_OF=([resnet32x4_resnet8x4]=resnet32x4 [wrn_40_2_wrn_16_2]=wrn_40_2
                       [resnet56_resnet20]=resnet56 [vgg13_vgg8]=vgg13 [resnet32x4_ShuffleV2]=resnet32x4)

PAIRS=()
EXTRA=()
while [[ $# -gt 0 ]]; do
  if [[ $1 == -- ]]; then shift; EXTRA=("$@"); break; fi
  if [[ -z ${TEACHER_OF[$1]:-} ]]; then
    echo "reproduce_cifar100: unknown pair '$1'; choose from: ${ALL_PAIRS[*]}" >&2
    exit 2
  fi
  PAIRS+=("$1"); shift
done
[[ ${#PAIRS[@]} -gt 0 ]] || PAIRS=("${ALL_PAIRS[@]}")
METHODS=${METHODS:-"kd fitnet at rkd crd dkd"}
SEEDS=${SEEDS:-42}
OUT=${OUT:-outputs/cifar100_reproduce}
if [[ -z ${KD_TRAIN:-} ]]; then
  if [[ -x .venv/bin/kd-train ]]; then KD_TRAIN=.venv/bin/kd-train; else KD_TRAIN=kd-train; fi
fi
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi

run() {  # run DIR OVERRIDES...: one kd-train run writing into DIR, unless it finished before
  local dir=$1; shift
  if [[ -f $dir/summary.json ]]; then echo "== done already: $dir"; return 0; fi
  echo "== $KD_TRAIN $* ${EXTRA[*]} hydra.run.dir=$dir"
  [[ ${DRY_RUN:-0} == 1 ]] && return 0
  $KD_TRAIN "$@" "${EXTRA[@]}" "hydra.run.dir=$dir"
}

teacher_ckpt() {  # the teacher checkpoint a finished run used (empty when unknown)
  [[ -f $1/summary.json ]] || return 0
  "$PYTHON" -c 'import json, sys; print((json.load(open(sys.argv[1])).get("teacher") or {}).get("ckpt_path") or "")' \
    "$1/summary.json"
}

declare -A CKPT=()
for seed in $SEEDS; do
  for pair in "${PAIRS[@]}"; do
    teacher=${TEACHER_OF[$pair]}
    key="$seed/$teacher"
    if [[ -z ${CKPT[$key]:-} && $pair == *_ShuffleV2 ]]; then
      # Its students use lr 0.01, which must not train the teacher: get the lr-0.05 one first.
      tdir=$OUT/seed$seed/cifar100_teacher_$teacher
      run "$tdir" "experiment=cifar100_teacher_$teacher" "seed=$seed"
      CKPT[$key]=$(teacher_ckpt "$tdir")
    fi
    first=1
    for method in $METHODS; do
      exp=cifar100_${pair}_${method}
      dir=$OUT/seed$seed/$exp
      args=("experiment=$exp" "seed=$seed")
      [[ -n ${CKPT[$key]:-} ]] && args+=("teacher.ckpt_path=${CKPT[$key]}")
      [[ $first == 1 ]] || args+=("baseline.enabled=false")
      run "$dir" "${args[@]}"
      [[ -n ${CKPT[$key]:-} ]] || CKPT[$key]=$(teacher_ckpt "$dir")
      first=0
    done
  done
done

if [[ ${DRY_RUN:-0} != 1 ]]; then
  "$PYTHON" scripts/collect_cifar100.py "$OUT" --output "$OUT/table.md"
  echo "== table written to $OUT/table.md"
fi
