#!/usr/bin/env bash
# Install the build into a fresh prefix, build the consumer project against it with
# find_package(deploykit), and run it on a model: proves the installed package config works.
# Usage: check_consumer.sh BUILD_DIR MODEL
set -euo pipefail
build="$1"; model="$2"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" > "$work/install.log"
cmake -S "$here" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log"
# the installed tree is self-contained: its library finds libonnxruntime.so.1 beside itself
test -e "$work/prefix/lib/libonnxruntime.so.1"
out="$(env -u LD_LIBRARY_PATH "$work/build/app" "$model")"
echo "$out"
test -n "$out"
