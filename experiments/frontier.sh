#!/usr/bin/env bash
# What a lock is worth against a trained attacker (issue 18): for each network, lock and
# extraction ratio, the attacker's best advantage over training from scratch on the same data,
# with the key size beside it. The attackers are fine-tuning from the locked weights and
# re-initialising what looks extracted before fine-tuning (`attack reinit`); scratch trains a
# fresh model of the same architecture on the same images. Trial t of every attack draws the
# same labelled subset (seed t), so advantages are paired by trial. Scratch depends only on the
# network, the data fraction and the trial seeds, not on the locked model, so it runs once per
# network and every point is compared with that one run.
#
#   experiments/frontier.sh        # rerun to resume: finished points are kept
#
# Writes $OUT/frontier.csv (every attack of every finished point under $OUT, also those of
# earlier runs with other settings), $OUT/frontier-best.csv (the best attack per point) and per
# network $OUT/frontier-NET.png / .svg (best advantage against the ratio) and
# $OUT/frontier-NET-key.png / .svg (against the key size). The 2-point line is issue 18's bar.
#
# Settings (environment): NETS (default "resnet20 vgg19"), LOCKS ("default l1 bn": the default
# lock, the paper's l1 per layer and bn; also l1-global, and decoy: the default lock with
# covariance-matched decoys in the extracted positions), RATIOS ("0.05 0.1 0.2 0.35 0.5"),
# FRACTIONS ("0.05 0.1": the attacker's share of the training labels), TRIALS (3), EPOCHS (2,
# attack and scratch alike), TEST_SUBSET (0: the full test split), THREADS (0: all cores).
# Checkpoints: CKPT_resnet20 (default runs/demo/resnet20.ckpt, the main job's), CKPT_<net>
# (default runs/table1/<net>-e1.ckpt, experiments/table1.sh's); a missing one is trained (2
# epochs for resnet20 as the main job, TRAIN_EPOCHS=1 otherwise as table1.sh). Points of one
# $OUT must share FRACTIONS, EPOCHS, TRIALS, TEST_SUBSET and THREADS: the script refuses to mix them.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CORELOCKER:-build/corelocker}
# LAUNCH: a launcher for the commands that share their work over a group of processes (train,
# sweep, bands, attack; docs/distributed.md), e.g.
# LAUNCH="torchrun --no_python --nproc_per_node 2 --redirects 1 --tee 1"
read -r -a LAUNCH <<< "${LAUNCH:-}"
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
PYTHON=${PYTHON:-python3}

[ -x "$BIN" ] || { echo "no corelocker binary at $BIN (build first, or set CORELOCKER)" >&2; exit 1; }
mkdir -p "$OUT"

settings="fractions=$FRACTIONS epochs=$EPOCHS trials=$TRIALS test_subset=$TEST_SUBSET threads=$THREADS"
if [ -f "$OUT/settings" ]; then
  [ "$(cat "$OUT/settings")" = "$settings" ] || {
    echo "$OUT holds points made with '$(cat "$OUT/settings")', not '$settings': use another OUT" >&2; exit 2; }
else
  echo "$settings" > "$OUT/settings"
fi

lock_args() {
  case "$1" in
    default) echo "" ;;                             # the default lock: l1, global, first/last included
    l1) echo "--criterion l1" ;;                    # the paper's l1: per layer, first/last left alone
    bn) echo "--criterion bn" ;;                    # the paper's bn: global
    l1-global) echo "--criterion l1 --scope global" ;;
    decoy) echo "--fill decoy" ;;                   # the default lock, decoys instead of zeros
    *) echo "unknown lock '$1' (default, l1, bn, l1-global, decoy)" >&2; exit 2 ;;
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
    "${LAUNCH[@]}" "$BIN" train --arch "$net" --epochs "$epochs" --threads "$THREADS" --out "$ckpt" > "$ckpt.train.log" 2>&1
  fi
  echo "$ckpt"
}

fractions=$(echo $FRACTIONS | tr ' ' ',')
attack_common=(--data-fraction "$fractions" --trials "$TRIALS" --epochs "$EPOCHS" --test-subset "$TEST_SUBSET" --threads "$THREADS")

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
        "$BIN" lock --model "$ckpt" $args --ratio "$ratio" --threads "$THREADS" --out "$dir/locked.ckpt" \
          --key-out "$dir/key.clk" > "$dir/lock.log" 2>&1
        touch "$dir/lock.done"
      fi
      # Every fraction in one call: the locked model's own accuracy is measured once.
      if [ ! -f "$dir/attack.json.done" ]; then
        echo "== attack $net $lock $ratio, $fractions of the labels, $TRIALS trials $(date -u +%FT%TZ)"
        "${LAUNCH[@]}" "$BIN" attack finetune,reinit --model "$dir/locked.ckpt" "${attack_common[@]}" \
          --report "$dir/attack.json" > "$dir/attack.log" 2>&1
        touch "$dir/attack.json.done"
      fi
    done
  done
  # Scratch for every fraction; the locked model given only names the architecture.
  s="$OUT/$net/scratch.json"
  if [ ! -f "$s.done" ]; then
    echo "== scratch $net, $fractions of the labels, $TRIALS trials $(date -u +%FT%TZ)"
    any=$(ls -d "$OUT/$net"/*/locked.ckpt | head -1)
    "${LAUNCH[@]}" "$BIN" attack scratch --model "$any" "${attack_common[@]}" --report "$s" > "${s%.json}.log" 2>&1
    touch "$s.done"
  fi
done

# Every finished point under $OUT, paired with its network's scratch run by trial seed.
"$PYTHON" - "$OUT" <<'PY'
import csv, glob, json, os, re, statistics, sys
out = sys.argv[1]
rows, best = [], {}
def lock_log(path, pattern):
    m = re.search(pattern, open(path).read(), re.M)
    return m.group(1) if m else ""
for report in sorted(glob.glob(os.path.join(out, "*", "*-*", "attack.json"))):
    point = os.path.dirname(report)
    net = os.path.basename(os.path.dirname(point))
    scratch_path = os.path.join(out, net, "scratch.json")
    if not (os.path.exists(report + ".done") and os.path.exists(scratch_path + ".done")):
        continue
    lock, ratio = os.path.basename(point).rsplit("-", 1)
    scratch = {(a["data_fraction"], t["seed"]): t["top1"]
               for a in json.load(open(scratch_path))["attacks"] for t in a["trials"]}
    key_bytes = lock_log(os.path.join(point, "lock.log"), r"^ *key size: *([0-9]+) bytes")
    params = lock_log(os.path.join(point, "lock.log"), r"^ *parameters extracted:.*\(([0-9.]+)%\)")
    for a in json.load(open(report))["attacks"]:
        f = a["data_fraction"]
        base = [scratch[(f, t["seed"])] for t in a["trials"]]
        diffs = [t["top1"] - b for t, b in zip(a["trials"], base)]
        adv = statistics.mean(diffs)
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        row = [net, lock, ratio, key_bytes, params, "%g" % f, len(diffs), a["attack"],
               "%.2f" % a["mean_top1"], "%.2f" % statistics.mean(base), "%.2f" % adv, "%.2f" % sd]
        rows.append(row)
        k = tuple(row[:7])
        if k not in best or adv > float(best[k][10]):
            best[k] = row
head = ["net", "lock", "ratio", "key_bytes", "param_percent", "data_fraction", "trials", "attack",
        "top1", "scratch_top1", "advantage", "advantage_sd"]
order = lambda r: (r[0], r[1], float(r[2]), float(r[5]))
for name, table in (("frontier.csv", rows), ("frontier-best.csv", best.values())):
    with open(os.path.join(out, name + ".tmp"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(head if name == "frontier.csv" else head[:7] + ["best_attack"] + head[8:])
        w.writerows(sorted(table, key=order))
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
PY
column -s, -t < "$OUT/frontier-best.csv"

command -v gnuplot > /dev/null || exit 0
for net in $(cut -d, -f1 "$OUT/frontier-best.csv" | tail -n +2 | sort -u); do
  data="$OUT/frontier-$net.dat"
  : > "$data"
  plots_ratio=""
  plots_key=""
  i=0
  for lock in $(awk -F, -v n="$net" '$1 == n { print $2 }' "$OUT/frontier-best.csv" | sort -u); do
    for f in $(awk -F, -v n="$net" -v l="$lock" '$1 == n && $2 == l { print $6 }' "$OUT/frontier-best.csv" | sort -u); do
      awk -F, -v n="$net" -v l="$lock" -v f="$f" '$1 == n && $2 == l && $6 == f { print $3, $11, $12, $4 / 1000 }' \
        "$OUT/frontier-best.csv" >> "$data"
      printf '\n\n' >> "$data"
      title="$lock, $(awk -v f="$f" 'BEGIN { print f * 100 }')% labels"
      plots_ratio="$plots_ratio${plots_ratio:+, }'$data' index $i using 1:2:3 with yerrorlines title '$title'"
      plots_key="$plots_key${plots_key:+, }'$data' index $i using 4:2:3 with yerrorlines title '$title'"
      i=$((i + 1))
    done
  done
  for term in "pngcairo size 900,600" "svg size 900,600"; do
    ext=${term%% *}; ext=${ext%cairo}
    for x in ratio key; do
      if [ "$x" = ratio ]; then out="$OUT/frontier-$net.$ext"; xlabel='extraction ratio'; plots=$plots_ratio
      else out="$OUT/frontier-$net-key.$ext"; xlabel='key size (KB)'; plots=$plots_key; fi
      gnuplot <<GP
set terminal $term
set output '$out'
set title "$net: the best attacker's advantage over training from scratch"
set xlabel '$xlabel'
set ylabel 'best attack - scratch (top-1 points)'
set logscale x
set grid
set key outside right
plot $plots, 2 with lines dashtype 2 lc rgb 'gray' title '2 points', 0 with lines lc rgb 'black' notitle
GP
    done
  done
  echo "wrote $OUT/frontier-$net.png, $OUT/frontier-$net-key.png (and .svg)"
done
