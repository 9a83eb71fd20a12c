#!/usr/bin/env bash
# Coverage-guided fuzzing of deploykit's parsers of untrusted input (docs/robustness.md).
#
#   scripts/fuzz.sh list                 the targets
#   scripts/fuzz.sh TARGET SECONDS       fuzz one target for SECONDS (niced), then print
#                                        executions, coverage and findings
#   scripts/fuzz.sh build               build the C++ libFuzzer binaries (clang, ASan + UBSan)
#
# Python targets (py-*) run under atheris (tests/fuzz/run_atheris.py; coverage = the counters of
# the instrumented deploykit/PIL modules); C++ targets (cpp-*) are libFuzzer binaries built from
# cpp/fuzz with clang, ASan and UBSan. Seeds come from the kept corpus (tests/fuzz/corpus/<t>,
# cpp/fuzz/corpus/<t>); inputs the fuzzer adds go to $DEPLOYKIT_FUZZ_OUT/<target>/corpus (default
# build/fuzz, not in git); a finding is written to $DEPLOYKIT_FUZZ_OUT/<target>/crash-* (or
# timeout-*, oom-*): copy it into the kept corpus once fixed, so the tests replay it.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
out="${DEPLOYKIT_FUZZ_OUT:-$root/build/fuzz}"
build="${DEPLOYKIT_FUZZ_BUILD:-$root/cpp/build/fuzz}"
py_targets=(manifest images calibration trt_check triton_request client_response)
cpp_targets=(fuzz_manifest fuzz_c_api fuzz_stb)

list() {
    for t in "${py_targets[@]}"; do echo "py-$t"; done
    for t in "${cpp_targets[@]}"; do echo "cpp-${t#fuzz_}"; done
}

build_cpp() {
    local ort
    ort="${DEPLOYKIT_ORT:-$(cpp/scripts/fetch_onnxruntime.sh "$root/cpp/build/onnxruntime")}"
    cmake -S cpp -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang-14 \
        -DCMAKE_CXX_COMPILER=clang++-14 -DDEPLOYKIT_FUZZ=ON -DDEPLOYKIT_SANITIZE=address,undefined \
        -DDEPLOYKIT_BUILD_TESTS=OFF -DDEPLOYKIT_BUILD_EXAMPLES=OFF -DDEPLOYKIT_BUILD_BENCH=OFF \
        -DONNXRUNTIME_ROOT="$ort" >/dev/null
    nice -n 15 cmake --build "$build" -j2 --target "${cpp_targets[@]}"
    mkdir -p "$out/artifacts"
    python tests/fuzz/toys.py "$out/artifacts" >/dev/null
}

summary() {  # TARGET LOG DIR SECONDS
    local last execs cov ft findings
    last="$(grep -E '^#[0-9]+' "$2" | tail -n1 || true)"
    execs="$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")"
    cov="$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")"
    ft="$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")"
    findings="$(find "$3" -maxdepth 1 \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)"
    echo "== $1: ${4}s, executions ${execs:-0}, coverage cov ${cov:-0} ft ${ft:-0}, corpus $(find "$3/corpus" -type f | wc -l) inputs, findings $findings (log $2)"
    find "$3" -maxdepth 1 \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) -printf '   finding: %p\n'
}

run() {
    local target="$1" seconds="$2" dir log
    dir="$out/$target"
    log="$dir/fuzz.log"
    mkdir -p "$dir/corpus"
    local flags=(-max_total_time="$seconds" -artifact_prefix="$dir/" -timeout=25 -rss_limit_mb=4096
                 -print_final_stats=1)
    case "$target" in
        py-*)
            local name="${target#py-}" dict="tests/fuzz/dicts/${target#py-}.dict"
            [ -f "$dict" ] && flags+=(-dict="$dict")
            # libFuzzer ends the process without Python's atexit: the targets' scratch folders (toy
            # artifacts, TensorRT stub libraries) go in a temp dir of this run, removed here
            local scratch
            scratch="$(mktemp -d "${TMPDIR:-/tmp}/deploykit-fuzz-run-XXXXXX")"
            TMPDIR="$scratch" nice -n 15 python tests/fuzz/run_atheris.py "$name" "${flags[@]}" "$dir/corpus" \
                "tests/fuzz/corpus/$name" >"$log" 2>&1 || true
            rm -rf "$scratch"
            ;;
        cpp-*)
            local name="fuzz_${target#cpp-}" dict="cpp/fuzz/dicts/${target#cpp-}.dict"
            [ -x "$build/fuzz/$name" ] || build_cpp
            [ -f "$dict" ] && flags+=(-dict="$dict")
            DEPLOYKIT_FUZZ_ARTIFACTS="$out/artifacts" \
            ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
                nice -n 15 "$build/fuzz/$name" "${flags[@]}" "$dir/corpus" "cpp/fuzz/corpus/$name" >"$log" 2>&1 || true
            ;;
        *) echo "fuzz.sh: target: expected one of: $(list | tr '\n' ' '), got '$target'" >&2; exit 2 ;;
    esac
    summary "$target" "$log" "$dir" "$seconds"
}

case "${1:-}" in
    list) list ;;
    build) build_cpp ;;
    "") echo "usage: scripts/fuzz.sh list | build | TARGET SECONDS" >&2; exit 2 ;;
    *)
        [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "fuzz.sh: SECONDS: expected a number, got '${2:-}'" >&2; exit 2; }
        run "$1" "$2"
        ;;
esac
