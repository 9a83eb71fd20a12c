#!/usr/bin/env bash
# The C++ part of CI (.ci/run calls it after the Python suite; deploykit is pip-installed by then):
#   1. apt packages (cmake, g++, nlohmann-json3-dev, libgtest-dev, libstb-dev) when missing;
#   2. ONNX Runtime headers + library link (cpp/scripts/fetch_onnxruntime.sh);
#   3. build with warnings as errors and run the ctest suite; the build also compiles (not links)
#      src/trt_backend.cpp against TensorRT's real public headers (no TensorRT libraries here):
#      $DEPLOYKIT_TRT_HEADERS, else ../shared/third_party/tensorrt-oss-*/include beside the
#      checkout, else /work/shared/third_party/tensorrt-oss-*/include; none found fails CI;
#   4. build and run the suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
# The fixtures (exported demo models, Python references) are made once and shared by both runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
build="${DEPLOYKIT_CPP_BUILD:-$root/cpp/build}"
jobs="${DEPLOYKIT_CPP_JOBS:-2}"
packages=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libgtest-dev libstb-dev)
packages+=(clang-14 libclang-rt-14-dev)  # libFuzzer + sanitizers for cpp/fuzz (scripts/fuzz.sh)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "ci.sh: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
ort="$(cpp/scripts/fetch_onnxruntime.sh "$build/onnxruntime")"
fixtures="$build/fixtures"

# TensorRT's public headers (NvInfer.h): the first place that has them, newest version first.
places=("\$DEPLOYKIT_TRT_HEADERS" "$root/../shared/third_party/tensorrt-oss-*/include"
        "/work/shared/third_party/tensorrt-oss-*/include")
candidates=()
[ -n "${DEPLOYKIT_TRT_HEADERS:-}" ] && candidates+=("$DEPLOYKIT_TRT_HEADERS")
for base in "$root/../shared/third_party" /work/shared/third_party; do
    mapfile -t found < <(compgen -G "$base/tensorrt-oss-*/include" | sort -rV)
    candidates+=("${found[@]}")
done
trt_headers=""
for dir in "${candidates[@]}"; do
    if [ -f "$dir/NvInfer.h" ] && [ -f "$dir/NvInferVersion.h" ]; then trt_headers="$(cd "$dir" && pwd -P)"; break; fi
done
if [ -z "$trt_headers" ]; then
    echo "ci.sh: expected TensorRT's headers (NvInfer.h, NvInferVersion.h) in ${places[0]} (${DEPLOYKIT_TRT_HEADERS:-unset}), then ${places[1]}, then ${places[2]}; found none" >&2
    exit 1
fi
trt_number() {  # NV_TENSORRT_<part>, or TensorRT 11's TRT_<part>_ENTERPRISE it is defined as
    sed -nE "s/^#define (NV_TENSORRT|TRT)_$1(_ENTERPRISE)? +([0-9]+).*/\3/p" "$trt_headers/NvInferVersion.h" | head -n1
}
trt_version="$(trt_number MAJOR).$(trt_number MINOR)"
trt_compiled() {  # the line proving that this build compiled src/trt_backend.cpp
    if [ -s "$1/CMakeFiles/deploykit_trt_backend_check.dir/src/trt_backend.cpp.o" ]; then
        echo "== C++: TensorRT backend compiled against TensorRT $trt_version headers ($trt_headers)$2"
    elif [ -s "$1/CMakeFiles/deploykit_core.dir/src/trt_backend.cpp.o" ]; then
        echo "== C++: TensorRT backend built against the installed TensorRT$2"
    else
        echo "ci.sh: expected $1 to have compiled src/trt_backend.cpp against $trt_headers, got no object file" >&2
        exit 1
    fi
}
common=(-G Ninja -DONNXRUNTIME_ROOT="$ort" -DDEPLOYKIT_WERROR=ON -DDEPLOYKIT_TEST_FIXTURES="$fixtures"
        -DDEPLOYKIT_TENSORRT_HEADERS="$trt_headers")

start=$SECONDS
echo "== C++: build (warnings as errors) and test"
cmake -S cpp -B "$build/release" -DCMAKE_BUILD_TYPE=Release "${common[@]}" >/dev/null
nice -n 10 cmake --build "$build/release" -j"$jobs"
trt_compiled "$build/release" ""
ctest --test-dir "$build/release" --output-on-failure -j"$jobs"
echo "== C++: sizes: $(du -h "$build/release/libdeploykit.so."*.*.* | cut -f1) libdeploykit, $(du -h "$build/release/examples/deploykit-detect" | cut -f1) deploykit-detect"

echo "== C++: AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S cpp -B "$build/asan" -DCMAKE_BUILD_TYPE=Debug -DDEPLOYKIT_SANITIZE=address,undefined "${common[@]}" >/dev/null
nice -n 10 cmake --build "$build/asan" -j"$jobs"
trt_compiled "$build/asan" " under ASan + UBSan"
# LeakSanitizer checks every test process at exit (no suppressions).
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
    ctest --test-dir "$build/asan" --output-on-failure -j"$jobs"
# The libFuzzer targets (clang, ASan + UBSan) build, and replay their kept inputs once (the ctest runs
# above replayed them with g++ too); fuzzing for minutes is scripts/fuzz.sh, not CI.
echo "== C++: libFuzzer targets (clang): build and replay the kept inputs"
DEPLOYKIT_ORT="$ort" DEPLOYKIT_FUZZ_BUILD="$build/fuzz" DEPLOYKIT_FUZZ_OUT="$build/fuzz-out" scripts/fuzz.sh build
for target in fuzz_manifest fuzz_c_api fuzz_stb; do
    DEPLOYKIT_FUZZ_ARTIFACTS="$build/fuzz-out/artifacts" "$build/fuzz/fuzz/$target" -runs=0 "cpp/fuzz/corpus/$target" 2>&1 | tail -n 1
done
echo "== C++: done in $((SECONDS - start)) s"
