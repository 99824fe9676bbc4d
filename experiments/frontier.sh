#!/usr/bin/env bash
# What a lock is worth against a trained attacker (issue 18): for each network, lock and
# extraction ratio, the attacker's best advantage over training from scratch on the same data,
# with the key size beside it. The attackers are fine-tuning from the locked weights and
# re-initialising the extracted positions before fine-tuning (`attack reinit`); scratch trains a
# fresh model of the same architecture on the same images (paired by trial).
#
#   experiments/frontier.sh        # rerun to resume: finished points are kept
#
# Writes $OUT/frontier.csv (every attack), $OUT/frontier-best.csv (the best attack per point)
# and $OUT/frontier-NET.png / .svg (best advantage against the ratio, one line per lock and
# label budget; the 2-point line is the bar of issue 18).
#
# Settings (environment): NETS (default "resnet20 vgg19"), LOCKS ("default l1 bn": the default
# lock, the paper's l1 per layer and bn), RATIOS ("0.05 0.1 0.2 0.35 0.5"), FRACTIONS
# ("0.05 0.1": the attacker's share of the training labels), TRIALS (3), EPOCHS (2, attack and
# scratch alike), TEST_SUBSET (0: the full test split), THREADS (0: all cores). Checkpoints:
# CKPT_resnet20 (default runs/demo/resnet20.ckpt, the main job's), CKPT_vgg19 (default
# runs/table1/vgg19-e1.ckpt, experiments/table1.sh's); a missing one is trained (2 epochs for
# resnet20 as the main job, TRAIN_EPOCHS=1 otherwise as table1.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CORELOCKER:-build/corelocker}
OUT=${OUT:-runs/frontier}
NETS=${NETS:-"resnet20 vgg19"}
LOCKS=${LOCKS:-"default l1 bn"}
RATIOS=${RATIOS:-"0.05 0.1 0.2 0.35 0.5"}
FRACTIONS=${FRACTIONS:-"0.05 0.1"}
TRIALS=${TRIALS:-3}
EPOCHS=${EPOCHS:-2}
TEST_SUBSET=${TEST_SUBSET:-0}
THREADS=${THREADS:-0}
TRAIN_EPOCHS=${TRAIN_EPOCHS:-1}

[ -x "$BIN" ] || { echo "no corelocker binary at $BIN (build first, or set CORELOCKER)" >&2; exit 1; }
mkdir -p "$OUT"

lock_args() {
  case "$1" in
    default) echo "" ;;                             # the default lock: l1, global, first/last included
    l1) echo "--criterion l1" ;;                    # the paper's l1: per layer, first/last left alone
    bn) echo "--criterion bn" ;;                    # the paper's bn: global
    l1-global) echo "--criterion l1 --scope global" ;;
    *) echo "unknown lock '$1' (default, l1, bn, l1-global)" >&2; exit 2 ;;
  esac
}

checkpoint() {
  local net=$1 var="CKPT_$1"
  local ckpt=${!var:-}
  if [ -z "$ckpt" ]; then
    case "$net" in
      resnet20) ckpt=runs/demo/resnet20.ckpt ;;
      *) ckpt="runs/table1/$net-e$TRAIN_EPOCHS.ckpt" ;;
    esac
  fi
  if [ ! -f "$ckpt" ]; then
    local epochs=$TRAIN_EPOCHS
    [ "$net" = resnet20 ] && epochs=2
    mkdir -p "$(dirname "$ckpt")"
    echo "== train $net ($epochs epochs) -> $ckpt $(date -u +%FT%TZ)" >&2
    "$BIN" train --arch "$net" --epochs "$epochs" --threads "$THREADS" --out "$ckpt" > "$ckpt.train.log" 2>&1
  fi
  echo "$ckpt"
}

all="$OUT/frontier.csv"
echo "net,lock,ratio,key_bytes,param_percent,data_fraction,trials,attack,advantage,advantage_sd" > "$all.tmp"
for net in $NETS; do
  ckpt=$(checkpoint "$net")
  for lock in $LOCKS; do
    args=$(lock_args "$lock")
    for ratio in $RATIOS; do
      dir="$OUT/$net/$lock-$ratio"
      mkdir -p "$dir"
      if [ ! -f "$dir/lock.done" ]; then
        echo "== lock $net $lock $ratio $(date -u +%FT%TZ)"
        # shellcheck disable=SC2086  # $args is a list of options
        "$BIN" lock --model "$ckpt" $args --ratio "$ratio" --out "$dir/locked.ckpt" --key-out "$dir/key.clk" \
          > "$dir/lock.log" 2>&1
        touch "$dir/lock.done"
      fi
      key_bytes=$(sed -n 's/^ *key size: *\([0-9]*\) bytes.*/\1/p' "$dir/lock.log")
      params=$(sed -n 's/^ *parameters extracted:.*(\([0-9.]*\)%).*/\1/p' "$dir/lock.log")
      for f in $FRACTIONS; do
        log="$dir/attack-$f.log"
        if [ ! -f "$log.done" ]; then
          echo "== attack $net $lock $ratio, $f of the labels, $TRIALS trials $(date -u +%FT%TZ)"
          "$BIN" attack finetune,reinit,scratch --model "$dir/locked.ckpt" --data-fraction "$f" --trials "$TRIALS" \
            --epochs "$EPOCHS" --test-subset "$TEST_SUBSET" --threads "$THREADS" --report "$dir/attack-$f.json" \
            > "$log" 2>&1
          touch "$log.done"
        fi
        # "advantage over scratch: finetune (5% data) +27.81 ± 1.20 points"
        sed -n 's/^advantage over scratch: \(.*\) ([0-9.]*% data) \([-+][0-9.]*\)\( ± \([0-9.]*\)\)\{0,1\} points$/\1,\2,\4/p' "$log" |
          while IFS=, read -r attack adv sd; do
            echo "$net,$lock,$ratio,$key_bytes,$params,$f,$TRIALS,$attack,$adv,$sd"
          done >> "$all.tmp"
      done
    done
  done
done
mv "$all.tmp" "$all"

best="$OUT/frontier-best.csv"
awk -F, 'NR == 1 { next }
  { k = $1 FS $2 FS $3 FS $4 FS $5 FS $6 FS $7
    if (!(k in adv) || $9 + 0 > adv[k] + 0) { adv[k] = $9; sd[k] = $10; who[k] = $8 }
    if (!(k in seen)) { seen[k] = 1; order[n++] = k } }
  END { print "net,lock,ratio,key_bytes,param_percent,data_fraction,trials,best_attack,advantage,advantage_sd"
        for (i = 0; i < n; i++) print order[i] FS who[order[i]] FS adv[order[i]] FS sd[order[i]] }' "$all" > "$best"
column -s, -t < "$best"

if command -v gnuplot > /dev/null; then
  for net in $NETS; do
    data="$OUT/frontier-$net.dat"
    : > "$data"
    for lock in $LOCKS; do
      for f in $FRACTIONS; do
        awk -F, -v n="$net" -v l="$lock" -v f="$f" '$1 == n && $2 == l && $6 == f { print $3, $9, $10, $4 }' "$best" >> "$data"
        printf '\n\n' >> "$data"
      done
    done
    plots=""
    i=0
    for lock in $LOCKS; do
      for f in $FRACTIONS; do
        plots="$plots${plots:+, }'$data' index $i using 1:2:3 with yerrorlines title '$lock, $(awk -v f="$f" 'BEGIN { print f * 100 }')% labels'"
        i=$((i + 1))
      done
    done
    for term in "pngcairo size 900,600" "svg size 900,600"; do
      ext=${term%% *}; ext=${ext%cairo}
      gnuplot <<EOF
set terminal $term
set output '$OUT/frontier-$net.$ext'
set title "$net: the best attacker's advantage over training from scratch"
set xlabel 'extraction ratio'
set ylabel 'best attack - scratch (top-1 points)'
set logscale x
set grid
set key outside right
plot $plots, 2 with lines dashtype 2 lc rgb 'gray' title '2 points', 0 with lines lc rgb 'black' notitle
EOF
    done
    echo "wrote $OUT/frontier-$net.png, $OUT/frontier-$net.svg"
  done
fi
