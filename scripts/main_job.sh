#!/usr/bin/env bash
# Sets up (packages + build) and runs the main job: train resnet20 on Fashion-MNIST (or reuse the
# cached checkpoint in runs/demo), lock it at ratio 0.05 with the default lock and with the paper's
# l1 and bn, measure each lock plain and after BatchNorm re-estimation and pruning (the effective
# top-1), compare with random extraction over 5 seeds, unlock, and print one table. Extra arguments
# go to `corelocker demo`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CORELOCKER_BUILD_DIR:-$root/build}"
# Only what the main job runs: the command-line tool (corelocker_cli builds corelocker-torch too).
"$root/scripts/setup.sh" "$build" corelocker_cli
cd "$root"
exec "$build/corelocker" demo --workdir "${CORELOCKER_WORKDIR:-runs/demo}" "$@"
