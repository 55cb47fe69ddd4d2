#!/usr/bin/env bash
# The GPU check on the GPU machine, in the repository's root, with the folder that
# benchmarks/gpu/prepare.sh built here carried along (the machine has no network):
#
#   bash benchmarks/gpu/device.sh                 # the first lease: core, fmnist, autoattack (under 9 min)
#   bash benchmarks/gpu/device.sh compile sweep   # a later lease
#   bash benchmarks/gpu/device.sh --smoke         # toy sizes on any device (CI rehearses the trip with it)
#
# It installs robench without network, points Python at the carried pyautoattack and
# robench at the carried data, and runs the parts in order, each killed at its hard
# limit (what it measured until then is kept). After every part it rewrites two files
# in $OUT (default ./gpu-out), so that a command stopped at its own limit still returns
# what was done: gpu-check.tar.gz (gpu-check.json, each part's log, the records) and
# summary.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
PREP=$PWD/benchmarks/gpu/prepared
OUT=${OUT:-$PWD/gpu-out}

# part -> "hard limit in seconds|estimate on an H100"; the first lease's parts come first
declare -A PLAN=(
  [core]="180|about 2.5 min: pytest -m gpu, the bf16 matmul ceiling, 4 eager WRN-34-10 bench rows"
  [fmnist]="150|about 2 min: one PGD-AT run on Fashion-MNIST in bf16, 1,000 test points"
  [autoattack]="120|about 1 min: AutoAttack on the GPU against the CPU side carried from prepare.sh"
  [compile]="330|about 5 min: the bench rows compiled, WRN-34-10 then PreAct-ResNet-18"
  [sweep]="330|about 5 min: the Fashion-MNIST sweep under a 4-minute budget"
)
SMOKE=()
PARTS=()
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=(--smoke) ;;
    core|fmnist|autoattack|compile|sweep) PARTS+=("$arg") ;;
    *) echo "error: unknown part '$arg' (parts: core fmnist autoattack compile sweep; option --smoke)" >&2; exit 2 ;;
  esac
done
[ ${#PARTS[@]} -eq 0 ] && PARTS=(core fmnist autoattack)
if [ ! -f "$PREP/commit" ]; then
  echo "error: $PREP is missing: run 'bash benchmarks/gpu/prepare.sh' where there is network, and carry that folder" >&2
  exit 2
fi

mkdir -p "$OUT"
SUMMARY=$OUT/summary.log
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
WORK=$(mktemp -d)
export PYTHONPATH="$PREP/site${PYTHONPATH:+:$PYTHONPATH}"
export ROBENCH_DATA=$PREP/data ROBENCH_RUNS=$WORK/runs
if [ -d "$PREP/autoattack" ]; then export ROBENCH_GPU_AA_REFERENCE=$PREP/autoattack; fi
ROBENCH_COMMIT=${ROBENCH_COMMIT:-$(cat "$PREP/commit")}
export ROBENCH_COMMIT

say "== robench GPU check, commit $ROBENCH_COMMIT, parts: ${PARTS[*]} ${SMOKE[*]}"
if ! "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -q -e . >> "$SUMMARY" 2>&1; then
  say "error: robench did not install without network (pip's output above)"
  exit 1
fi
"$PYTHON" -c "import torch, pyautoattack; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '| pyautoattack from', pyautoattack.__file__)" 2>&1 | tee -a "$SUMMARY"

pack() {  # the archive, replaced whole, so that a stop between two parts leaves a good one
  tar -czf "$OUT/.gpu-check.tar.gz" -C "$WORK" check && mv "$OUT/.gpu-check.tar.gz" "$OUT/gpu-check.tar.gz"
}
failed=0
for part in "${PARTS[@]}"; do
  limit=${PLAN[$part]%%|*}
  say "== $part: ${PLAN[$part]#*|}; killed at $limit s"
  start=$SECONDS
  timeout -k 10 "$limit" "$PYTHON" benchmarks/gpu/check.py "$part" --out "$WORK/check" \
    --seconds $((limit - 40)) --pytest-seconds $((limit / 2)) "${SMOKE[@]}" >> "$WORK/console.log" 2>&1
  code=$?
  case $code in
    0) say "== $part: done in $((SECONDS - start)) s" ;;
    124|137) say "== $part: killed at its limit after $((SECONDS - start)) s; what it measured is kept"; failed=1 ;;
    *) say "== $part: exit $code after $((SECONDS - start)) s (see $part.log in the archive)"; failed=1 ;;
  esac
  pack
done
"$PYTHON" benchmarks/gpu/check.py table --out "$WORK/check" >> "$SUMMARY" 2>&1
cp "$WORK/console.log" "$WORK/check/console.log" 2> /dev/null
pack
say "== results: $OUT/gpu-check.tar.gz and $OUT/summary.log"
exit $failed
