#!/usr/bin/env bash
# Times a clean build of the checkout with the unity build on and then off, one after the other
# (docs/benchmarks.md "Building"). Usage: bench/build_time.sh [WORK_DIR] (default /tmp/build-time;
# it holds a clone of HEAD and the two build folders, about 3 GB).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/build-time}"
rm -rf "$work"
mkdir -p "$work"
git clone -q "$root" "$work/src"
echo "commit $(git -C "$work/src" rev-parse --short HEAD), $(nproc) cores"
for mode in ON OFF; do
  b="$work/unity-$mode"
  cmake -S "$work/src" -B "$b" -DCMAKE_BUILD_TYPE=Release -DCORELOCKER_WERROR=ON \
    -DCORELOCKER_UNITY_BUILD=$mode > "$b.config.log"
  echo "load average before unity $mode: $(cut -d' ' -f1-3 /proc/loadavg)"
  start=$(date +%s.%N)
  cmake --build "$b" -j"${CORELOCKER_JOBS:-2}" > "$b.build.log" 2>&1
  end=$(date +%s.%N)
  echo "unity $mode: $(python3 -c "print(round($end - $start, 1))") s"
done
