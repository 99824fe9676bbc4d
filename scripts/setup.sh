#!/usr/bin/env bash
# Installs every Debian package corelocker needs and builds it. Idempotent and
# non-interactive; uses sudo when not root. Usage: scripts/setup.sh [build-dir [target...]]
# (no target: everything, tests included). Every caller configures the same way (warnings as
# errors: the project builds with Debian 12's GCC only), so the main job and the test command
# share one build instead of reconfiguring it and compiling everything twice.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
shift $(( $# > 0 ? 1 : 0 ))
targets=("$@")

packages=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-pthread libgloo-dev
  libcli11-dev nlohmann-json3-dev libsodium-dev zlib1g-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist gnuplot-nox
  python3-torch python3-dev pybind11-dev python3-pytest
  libonnx-dev libprotobuf-dev python3-onnx libopencv-dnn-dev
  librust-blake3-dev clang-format
)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's default libblas.so.3 is the reference BLAS; OpenBLAS makes matrix products ~25x faster.
if command -v update-alternatives >/dev/null; then
  blas="$(update-alternatives --list libblas.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-pthread | head -1 || true)"
  if [ -n "$blas" ]; then
    "${sudo_cmd[@]}" update-alternatives --set libblas.so.3-x86_64-linux-gnu "$blas" >/dev/null
  fi
  lapack="$(update-alternatives --list liblapack.so.3-x86_64-linux-gnu 2>/dev/null | grep openblas-pthread | head -1 || true)"
  if [ -n "$lapack" ]; then
    "${sudo_cmd[@]}" update-alternatives --set liblapack.so.3-x86_64-linux-gnu "$lapack" >/dev/null
  fi
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCORELOCKER_WERROR=ON ${CORELOCKER_CMAKE_ARGS:-} >/dev/null
if [ "${#targets[@]}" -gt 0 ]; then
  cmake --build "$build" -j"${CORELOCKER_JOBS:-2}" --target "${targets[@]}"
else
  cmake --build "$build" -j"${CORELOCKER_JOBS:-2}"
fi
