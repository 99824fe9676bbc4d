#!/usr/bin/env bash
# Sets up (packages + build, warnings as errors) and runs the whole test suite with ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${CORELOCKER_BUILD_DIR:-$root/build}"
"$root/scripts/setup.sh" "$build"
"$root/scripts/check-format.sh"
cd "$build"
ctest --output-on-failure -j"${CORELOCKER_TEST_JOBS:-2}" --timeout 900
# The Python module's tests (tests/python), with Debian's python3 and its python3-torch.
CORELOCKER_BUILD_DIR="$build" PYTHONPATH="$build/python" /usr/bin/python3 -m pytest -q -p no:cacheprovider "$root/tests/python"
