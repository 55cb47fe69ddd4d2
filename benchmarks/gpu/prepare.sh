#!/usr/bin/env bash
# Build what the GPU machine cannot get itself (it has no network), here, in the
# repository's root:
#
#   bash benchmarks/gpu/prepare.sh            # then carry benchmarks/gpu/prepared
#   bash benchmarks/gpu/prepare.sh --smoke    # toy sizes, for device.sh --smoke
#
# benchmarks/gpu/prepared/ (ignored by git, at most 40 MiB) holds:
#   site/        pyautoattack as installed here, without its 45 MB examples/
#   data/        the Fashion-MNIST files, in torchvision's layout (FashionMNIST/raw/)
#   autoattack/  the CPU side of the AutoAttack comparison, computed here (minutes on a
#                CPU): a standard-trained digits checkpoint and its AutoAttack report
#                (not with --smoke)
#   commit       the commit the records there will name (the tree travels without .git)
# and the script ends by printing the command to run there, the commit filled in.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python}
SMOKE=0
case "${1:-}" in
  "") ;;
  --smoke) SMOKE=1 ;;
  *) echo "error: unknown argument '$1' (usage: prepare.sh [--smoke])" >&2; exit 2 ;;
esac
PREP=benchmarks/gpu/prepared
NEW=$(mktemp -d "$PWD/benchmarks/gpu/.prepared.XXXXXX")
trap 'rm -rf "$NEW"' EXIT

# 1. pyautoattack: the installed package and its metadata, without examples/
"$PYTHON" - "$NEW/site" <<'EOF'
import importlib.metadata, shutil, sys
from pathlib import Path

site = Path(sys.argv[1])
dist = importlib.metadata.distribution("pyautoattack")
root = Path(dist.locate_file(""))
for top in sorted({Path(str(f)).parts[0] for f in dist.files or []}):
    if top.endswith(".dist-info") or (root / top / "__init__.py").is_file():
        shutil.copytree(root / top, site / top, ignore=shutil.ignore_patterns("examples", "__pycache__", "RECORD"))
print(f"pyautoattack {dist.version}: copied from {root}")
EOF

# 2. Fashion-MNIST: Debian's dataset-fashion-mnist files, or the files of its .deb
FILES="train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
SRC=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$SRC/t10k-labels-idx1-ubyte.gz" ]; then
  DEB=$(mktemp -d)
  (cd "$DEB" && apt-get download -q dataset-fashion-mnist > /dev/null && dpkg-deb -x ./*.deb root) \
    || { echo "error: no Fashion-MNIST files in $SRC and 'apt-get download dataset-fashion-mnist' failed" >&2; exit 1; }
  SRC="$DEB/root/usr/share/datasets/fashion-mnist"
fi
mkdir -p "$NEW/data/FashionMNIST/raw"
for f in $FILES; do cp "$SRC/$f" "$NEW/data/FashionMNIST/raw/"; done
echo "Fashion-MNIST: copied from $SRC"
if [ -n "${DEB:-}" ]; then rm -rf "$DEB"; fi

# 3. AutoAttack's CPU side: a standard-trained digits model, and AutoAttack on it at eps
#    1/64 on this CPU; the GPU evaluates the same checkpoint and compares. Not with
#    --smoke (AutoAttack takes minutes on a CPU whatever the number of points; the GPU
#    test then computes both sides itself)
if [ "$SMOKE" = 0 ]; then
  WORK=$(mktemp -d)
  echo "AutoAttack's CPU side: 3 epochs of standard training, then AutoAttack on 200 points (minutes)"
  ROBENCH_RUNS="$WORK/runs" "$PYTHON" -m robench run --defense standard --epochs 3 --device cpu \
    --attack fgsm --n-eval 200 --set eval.checks=false --results-dir "$WORK/results" -q > /dev/null
  mkdir -p "$NEW/autoattack"
  cp "$WORK"/runs/*/best.pt "$NEW/autoattack/best.pt"
  "$PYTHON" -m robench eval --checkpoint "$NEW/autoattack/best.pt" --device cpu --attack autoattack --eps 1/64 \
    --n-eval 200 --set eval.checks=false --out "$NEW/autoattack/cpu.json" -q > /dev/null
  rm -rf "$WORK"
fi

# 4. the commit, marked when the tree has changes of its own
if [ -n "${ROBENCH_COMMIT:-}" ]; then
  COMMIT=$ROBENCH_COMMIT  # a copy of the tree without .git
else
  COMMIT=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
  if [ -n "$(git status --porcelain --untracked-files=no 2> /dev/null)" ]; then COMMIT="$COMMIT+changes"; fi
fi
echo "$COMMIT" > "$NEW/commit"

SIZE=$(du -sm "$NEW" | cut -f1)
if [ "$SIZE" -gt 40 ]; then echo "error: $NEW is $SIZE MiB, over the 40 MiB it may carry" >&2; exit 1; fi
rm -rf "$PREP"
mv "$NEW" "$PREP"
trap - EXIT
echo "prepared: $PREP ($SIZE MiB, commit $COMMIT)"
echo "run there, in the repository's root, carrying $PREP:"
echo "  ROBENCH_COMMIT=$COMMIT bash benchmarks/gpu/device.sh$([ "$SMOKE" = 1 ] && echo ' --smoke')"
