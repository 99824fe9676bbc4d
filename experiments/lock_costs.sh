#!/usr/bin/env bash
# Lock and unlock cost per architecture (issue 9's benchmark list): wall time and peak memory of
# `lock` and `unlock` at ratio 0.05 with l1 and bn, the key size, and bytes of key per extracted
# value. Networks are freshly initialised (`train --epochs 0`): none of these costs depends on
# training. One CSV row per (architecture, criterion).
#
#   experiments/lock_costs.sh        # OUT=runs/lock-costs ARCHS="..." RATIO=0.05
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CORELOCKER:-build/corelocker}
OUT=${OUT:-runs/lock-costs}
ARCHS=${ARCHS:-"resnet20 vgg19 preresnet densenet fcn vit cnnlstm tinycnn"}
RATIO=${RATIO:-0.05}
THREADS=${THREADS:-0}

[ -x "$BIN" ] || { echo "no corelocker binary at $BIN (build first, or set CORELOCKER)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian package 'time')" >&2; exit 1; }
mkdir -p "$OUT"
csv="$OUT/lock-costs.csv"
echo "arch,criterion,ratio,parameters,values_extracted,key_bytes,bytes_per_value,lock_seconds,lock_peak_mib,unlock_seconds,unlock_peak_mib,restored_equal" > "$csv.tmp"
for arch in $ARCHS; do
  m="$OUT/$arch.ckpt"
  [ -f "$m" ] || "$BIN" train --arch "$arch" --epochs 0 --seed 0 --out "$m" > /dev/null
  for crit in l1 bn; do
    l="$OUT/$arch-$crit.ckpt"; k="$OUT/$arch-$crit.clk"; r="$OUT/$arch-$crit-restored.ckpt"
    rm -f "$l" "$k" "$r"
    if ! /usr/bin/time -f "%e %M" -o "$OUT/time" "$BIN" lock --model "$m" --criterion "$crit" \
        --ratio "$RATIO" --threads "$THREADS" --out "$l" --key-out "$k" > "$OUT/lock.log" 2>&1; then
      echo "$arch $crit: lock failed: $(tail -1 "$OUT/lock.log")"
      continue
    fi
    read -r lock_s lock_kb < "$OUT/time"
    /usr/bin/time -f "%e %M" -o "$OUT/time" "$BIN" unlock --model "$l" --key "$k" --out "$r" > /dev/null
    read -r unlock_s unlock_kb < "$OUT/time"
    same=no
    [ "$("$BIN" fingerprint "$r")" = "$("$BIN" fingerprint "$m")" ] && same=yes
    params=$(sed -n 's/.*parameters extracted: *\([0-9]*\) of \([0-9]*\).*/\2/p' "$OUT/lock.log")
    values=$(sed -n 's/.*parameters extracted: *\([0-9]*\) of.*/\1/p' "$OUT/lock.log")
    kbytes=$(stat -c %s "$k")
    awk -v a="$arch" -v c="$crit" -v r="$RATIO" -v p="$params" -v v="$values" -v kb="$kbytes" \
        -v ls="$lock_s" -v lk="$lock_kb" -v us="$unlock_s" -v uk="$unlock_kb" -v s="$same" \
        'BEGIN { printf "%s,%s,%s,%s,%s,%s,%.2f,%s,%.0f,%s,%.0f,%s\n", a, c, r, p, v, kb, kb / v, ls, lk / 1024, us, uk / 1024, s }' >> "$csv.tmp"
  done
done
mv "$csv.tmp" "$csv"
column -s, -t "$csv"
