#!/usr/bin/env bash
# The C++ part of CI (.ci/run calls it after the Python suite; deploykit is pip-installed by then):
#   1. apt packages (cmake, g++, nlohmann-json3-dev, libgtest-dev, libstb-dev) when missing;
#   2. ONNX Runtime headers + library link (cpp/scripts/fetch_onnxruntime.sh);
#   3. build with warnings as errors and run the ctest suite;
#   4. build and run the suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
# The fixtures (exported demo models, Python references) are made once and shared by both runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
build="${DEPLOYKIT_CPP_BUILD:-$root/cpp/build}"
jobs="${DEPLOYKIT_CPP_JOBS:-2}"
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libgtest-dev libstb-dev)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "ci.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
ort="$(cpp/scripts/fetch_onnxruntime.sh "$build/onnxruntime")"
fixtures="$build/fixtures"
common=(-G Ninja -DONNXRUNTIME_ROOT="$ort" -DDEPLOYKIT_WERROR=ON -DDEPLOYKIT_TEST_FIXTURES="$fixtures")

start=$SECONDS
echo "== C++: build (warnings as errors) and test"
cmake -S cpp -B "$build/release" -DCMAKE_BUILD_TYPE=Release "${common[@]}" >/dev/null
nice -n 10 cmake --build "$build/release" -j"$jobs"
ctest --test-dir "$build/release" --output-on-failure -j"$jobs"
echo "== C++: sizes: $(du -h "$build/release/libdeploykit.so."*.*.* | cut -f1) libdeploykit, $(du -h "$build/release/examples/deploykit-detect" | cut -f1) deploykit-detect"

echo "== C++: AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S cpp -B "$build/asan" -DCMAKE_BUILD_TYPE=Debug -DDEPLOYKIT_SANITIZE=address,undefined "${common[@]}" >/dev/null
nice -n 10 cmake --build "$build/asan" -j"$jobs"
# LeakSanitizer checks every test process at exit (no suppressions).
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir "$build/asan" --output-on-failure -j"$jobs"
echo "== C++: done in $((SECONDS - start)) s"
