#!/usr/bin/env bash
# The paper's Figure 5 (section 5.1) at a size this machine can train: fully connected ReLU
# networks (`fcn`, no normalisation, as in the paper) of every depth x width, each trained on
# Fashion-MNIST and locked with l1 at small *global* ratios; the heatmap shows the accuracy drop.
#
#   experiments/fig5_depth_width.sh            # all of it; rerun to resume after a stop
#
# Resumable: a trained network (OUT/models) or a finished sweep (OUT/sweeps) is never redone.
# Settings come from the environment (defaults below). The paper: MNIST, widths 1,000-8,000,
# depths 4-13, Adam lr 0.001 for 50 epochs, ratio 0.002% of the weights. Here: Fashion-MNIST,
# one epoch of SGD (onecycle) on a 30,000-image subset, and the ratios in RATIOS; one heatmap per
# ratio in HEAT_RATIOS. Our widths are 4x smaller than the paper's, so a network has ~15x fewer
# hidden-to-hidden weights; the same *count* of extracted weights needs a ~15x larger ratio,
# hence 0.0003 (0.03%) beside the paper's 0.002% (0.00002); larger ratios show where these
# networks do lose accuracy.
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
OUT=${OUT:-runs/fig5}
DEPTHS=${DEPTHS:-"4 5 6 7 8 9 10 11 12 13"}
WIDTHS=${WIDTHS:-"256 512 1024 2048"}
EPOCHS=${EPOCHS:-1}
TRAIN_SUBSET=${TRAIN_SUBSET:-30000}
LR=${LR:-0.02}
OPTIMIZER=${OPTIMIZER:-sgd}  # the paper: adam with LR=0.001
RATIOS=${RATIOS:-0,0.00002,0.0001,0.0003,0.001,0.003,0.01,0.03}
HEAT_RATIOS=${HEAT_RATIOS:-"0.0003 0.01 0.03"}
THREADS=${THREADS:-0}

[ -x "$BIN" ] || { echo "no corelocker binary at $BIN (build first, or set CORELOCKER)" >&2; exit 1; }
mkdir -p "$OUT/models" "$OUT/sweeps"
start=$(date +%s)
for w in $WIDTHS; do
  for d in $DEPTHS; do
    name="fcn-d$d-w$w"
    ckpt="$OUT/models/$name.ckpt"
    if [ ! -f "$ckpt" ]; then
      echo "== train $name"
      t0=$(date +%s.%N)
      "${LAUNCH[@]}" "$BIN" train --arch fcn --depth "$d" --width "$w" --set norm=0 --epochs "$EPOCHS" \
        --optimizer "$OPTIMIZER" --lr "$LR" --train-subset "$TRAIN_SUBSET" --no-augment --no-eval --threads "$THREADS" \
        --out "$OUT/models/$name.part.ckpt" > "$OUT/models/$name.train.log" 2>&1
      echo "$t0 $(date +%s.%N)" | awk '{ printf "%.1f\n", $2 - $1 }' > "$OUT/models/$name.seconds"
      mv "$OUT/models/$name.part.ckpt" "$ckpt"
      rm -f "$OUT/models/$name.part.ckpt.optim"
      tail -1 "$OUT/models/$name.train.log"
    fi
    # A finished sweep is kept unless it was made with other ratios; an interrupted one goes on.
    if [ "$(cat "$OUT/sweeps/$name/ratios" 2>/dev/null)" != "$RATIOS" ]; then
      rm -rf "$OUT/sweeps/$name"
      mkdir -p "$OUT/sweeps/$name"
      echo "$RATIOS" > "$OUT/sweeps/$name/ratios"
    fi
    if ! finished "$OUT/sweeps/$name"; then
      echo "== lock $name at $RATIOS"
      "${LAUNCH[@]}" "$BIN" sweep --model "$ckpt" --ratios "$RATIOS" --criteria l1 --scope global --no-plot \
        --threads "$THREADS" --out-dir "$OUT/sweeps/$name" --resume > "$OUT/sweeps/$name.log" 2>&1
    fi
  done
done

# One table: depth, width, ratio, units (weights) extracted, top-1 locked, unlocked, drop.
table="$OUT/fig5.csv"
echo "depth,width,ratio,extracted,top1_unlocked,top1_locked,drop,train_wall_seconds" > "$table.tmp"
for w in $WIDTHS; do
  for d in $DEPTHS; do
    name="fcn-d$d-w$w"
    secs=$(cat "$OUT/models/$name.seconds" 2>/dev/null || true)
    awk -F, -v d="$d" -v w="$w" -v s="${secs:-}" '
      NR == 1 { next }
      $3 + 0 == 0 { base = $8; next }
      { rows[++n] = $3 "," $4 "," $8 }
      END { for (i = 1; i <= n; ++i) { split(rows[i], f, ",");
              printf "%s,%s,%s,%s,%.2f,%.2f,%.2f,%s\n", d, w, f[1], f[2], base, f[3], base - f[3], s } }
    ' "$OUT/sweeps/$name/sweep.csv" >> "$table.tmp"
  done
done
mv "$table.tmp" "$table"

# One heatmap per ratio in HEAT_RATIOS: the drop (depth across, width up), as the paper draws it.
plots=""
for r in $HEAT_RATIOS; do
  base="$OUT/fig5-r$r"
  # Width index rows (0, 1, 2, ...) so that every width gets a cell of the same height.
  awk -F, -v r="$r" 'NR > 1 && ($3 + 0) == (r + 0) { print $1, $2, $7 }' "$table" |
    sort -k2,2n -k1,1n |
    awk 'BEGIN { n = 0 } { if (!($2 in idx)) { idx[$2] = n; names[n++] = $2 } print $1, idx[$2], $3 }
         END { s = ""; for (i = 0; i < n; ++i) s = s (i ? ", " : "") "\"" names[i] "\" " i;
               print s > "/dev/stderr" }' > "$base.dat" 2> "$base.ytics"
  cat > "$base.gp" <<GP
set title "fcn ($OPTIMIZER, $EPOCHS epoch(s), $TRAIN_SUBSET images): top-1 drop (points), l1, global ratio $r of the weights"
set xlabel "hidden layers (depth)"
set ylabel "neurons per hidden layer (width)"
set cblabel "accuracy drop (percentage points)"
set palette defined (0 "#ffffcc", 0.5 "#fd8d3c", 1 "#800026")
set cbrange [0:*]
set xtics 1
set autoscale xfix
set autoscale yfix
set ytics ($(cat "$base.ytics"))
set view map
unset key
plot "$base.dat" using 1:2:3 with image, "$base.dat" using 1:2:(sprintf("%.1f", \$3)) with labels font ",8"
GP
  gnuplot -e "set terminal pngcairo size 960,520; set output '$base.png'" "$base.gp"
  gnuplot -e "set terminal svg size 960,520; set output '$base.svg'" "$base.gp"
  plots="$plots $base.png $base.svg"
done
echo "wrote $table,$plots ($(( $(date +%s) - start )) s this run)"
