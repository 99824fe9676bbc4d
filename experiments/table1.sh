#!/usr/bin/env bash
# The paper's Table 1, Fashion-MNIST columns: vgg19, preresnet (164) and densenet (40) trained
# here, then original / random (mean and sd of 5 seeds) / l1 / bn top-1 and top-3 at ratio 0.05
# on the full test split; l1 both in its default layer scope (5% of every layer) and in global
# scope (5% of all kernels, ranked together: the paper's "global extraction ratio").
#
#   experiments/table1.sh          # rerun to resume: finished steps are kept
#
# Training is cut for this 2-core machine (the paper: 120 epochs, batch 256): EPOCHS (default 1)
# epochs of the trainer's defaults (SGD, onecycle, batch 128, crop augmentation). A stopped
# training run goes on from its last finished epoch (`train --resume`).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CORELOCKER:-build/corelocker}
# LAUNCH: a launcher for the commands that share their work over a group of processes (train,
# sweep, bands, attack; docs/distributed.md), e.g.
# LAUNCH="torchrun --no_python --nproc_per_node 2 --redirects 1 --tee 1"
read -r -a LAUNCH <<< "${LAUNCH:-}"
finished() {  # a sweep folder whose sweep.json is complete (an interrupted one is resumed)
  grep -qs '"complete": true' "$1/sweep.json"
}
OUT=${OUT:-runs/table1}
ARCHS=${ARCHS:-"vgg19 preresnet densenet"}
EPOCHS=${EPOCHS:-1}
RATIO=${RATIO:-0.05}
SEEDS=${SEEDS:-5}
THREADS=${THREADS:-0}

[ -x "$BIN" ] || { echo "no corelocker binary at $BIN (build first, or set CORELOCKER)" >&2; exit 1; }
mkdir -p "$OUT"
for arch in $ARCHS; do
  ckpt="$OUT/$arch-e$EPOCHS.ckpt"
  if [ ! -f "$ckpt.done" ]; then
    resume=()
    [ -f "$ckpt.optim" ] && resume=(--resume)
    echo "== train $arch ($EPOCHS epochs) $(date -u +%FT%TZ)"
    t0=$(date +%s)
    "${LAUNCH[@]}" "$BIN" train --arch "$arch" --epochs "$EPOCHS" --threads "$THREADS" --out "$ckpt" \
      "${resume[@]}" > "$OUT/$arch-e$EPOCHS.train.log" 2>&1
    echo "$(( $(date +%s) - t0 ))" >> "$OUT/$arch-e$EPOCHS.seconds"
    touch "$ckpt.done"
    tail -2 "$OUT/$arch-e$EPOCHS.train.log"
  fi
  if ! finished "$OUT/$arch-e$EPOCHS-sweep"; then
    echo "== lock $arch at $RATIO: l1, bn, random x $SEEDS $(date -u +%FT%TZ)"
    "${LAUNCH[@]}" "$BIN" sweep --model "$ckpt" --ratios "$RATIO" --criteria l1,bn,random --seeds "$SEEDS" \
      --threads "$THREADS" --no-plot --out-dir "$OUT/$arch-e$EPOCHS-sweep" --resume \
      > "$OUT/$arch-e$EPOCHS-sweep.log" 2>&1
  fi
  if ! finished "$OUT/$arch-e$EPOCHS-sweep-global"; then
    echo "== lock $arch at $RATIO: l1 global scope $(date -u +%FT%TZ)"
    "${LAUNCH[@]}" "$BIN" sweep --model "$ckpt" --ratios "$RATIO" --criteria l1 --scope global \
      --threads "$THREADS" --no-plot --out-dir "$OUT/$arch-e$EPOCHS-sweep-global" --resume \
      > "$OUT/$arch-e$EPOCHS-sweep-global.log" 2>&1
  fi
done

table="$OUT/table1.csv"
echo "arch,epochs,train_wall_seconds,original_top1,original_top3,criterion,scope,ratio,param_fraction,top1,top1_sd,top3,top3_sd" > "$table.tmp"
for arch in $ARCHS; do
  log="$OUT/$arch-e$EPOCHS-sweep.log"
  [ -f "$OUT/$arch-e$EPOCHS-sweep/sweep.csv" ] || continue
  secs=$(awk '{ s += $1 } END { print s }' "$OUT/$arch-e$EPOCHS.seconds")
  orig=$(sed -n 's/.*unlocked top-1 \([0-9.]*\)%, top-3 \([0-9.]*\)%.*/\1,\2/p' "$log")
  for csv in "$OUT/$arch-e$EPOCHS-sweep/sweep.csv" "$OUT/$arch-e$EPOCHS-sweep-global/sweep.csv"; do
    [ -f "$csv" ] || continue
    awk -F, -v a="$arch" -v e="$EPOCHS" -v s="$secs" -v o="$orig" 'NR > 1 {
        printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n", a, e, s, o, $1, $2, $3, $6, $8, $9, $10, $11 }' \
      "$csv" >> "$table.tmp"
  done
done
mv "$table.tmp" "$table"
column -s, -t "$table"
