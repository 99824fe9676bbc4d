#!/usr/bin/env bash
# The ONNX bar of issue 7, measured: a small ResNet-style network trained in Python PyTorch on
# Fashion-MNIST and exported to ONNX (BN kept) is locked with l1, bn and random (seeds 1-5) at
# one ratio; each locked file must pass the ONNX checker (corelocker checks before writing, the
# Python side again) and is evaluated by loading its initializers into the same PyTorch module
# (bench/onnx_peer.py); unlock must give the original file back byte for byte. Then corelocker
# evaluates the original and the default lock itself, through OpenCV (docs/formats.md).
# Usage: scripts/onnx_trained.sh [work-dir] [ratio] [epochs]   (needs a built build/corelocker)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$root/runs/onnx}"
ratio="${2:-0.05}"
epochs="${3:-2}"
B="${CORELOCKER_BIN:-$root/build/corelocker}"
peer="$root/bench/onnx_peer.py"
mkdir -p "$work"
if [ ! -f "$work/model.onnx" ]; then
  /usr/bin/python3 "$peer" train --out "$work/model.onnx" --epochs "$epochs"
fi
runs=(l1:1 bn:1 random:1 random:2 random:3 random:4 random:5)
locked=()
for run in "${runs[@]}"; do
  c="${run%%:*}" seed="${run##*:}" name="${run/:/-s}"
  "$B" lock --model "$work/model.onnx" --criterion "$c" --ratio "$ratio" --seed "$seed" \
    --out "$work/locked-$name.onnx" --key-out "$work/key-$name.clk"
  "$B" unlock --model "$work/locked-$name.onnx" --key "$work/key-$name.clk" --out "$work/restored-$name.onnx"
  cmp "$work/model.onnx" "$work/restored-$name.onnx"
  echo "restored-$name.onnx: byte-identical to model.onnx"
  locked+=("$work/locked-$name.onnx")
done
/usr/bin/python3 "$peer" eval "$work/model.onnx" "${locked[@]}" "$work/restored-l1-s1.onnx"
# corelocker's own evaluation (OpenCV's dnn module): the original, to hold against the peer's
# PyTorch top-1 above, and the default lock with its plain and effective top-1.
"$B" eval --model "$work/model.onnx" --json
"$B" lock --model "$work/model.onnx" --ratio "$ratio" --out "$work/locked-default.onnx" \
  --key-out "$work/key-default.clk" --eval
"$B" unlock --model "$work/locked-default.onnx" --key "$work/key-default.clk" --out "$work/restored-default.onnx"
cmp "$work/model.onnx" "$work/restored-default.onnx"
echo "restored-default.onnx: byte-identical to model.onnx"
