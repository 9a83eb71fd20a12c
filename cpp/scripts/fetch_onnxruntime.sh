#!/usr/bin/env bash
# ONNX Runtime for the C++ build, without changing the system:
#   headers: Debian's libonnxruntime-dev (1.21). Installed with apt where the system has it
#            (Debian 13); on Debian 12 that one .deb is downloaded from Debian's trixie suite with a
#            private apt configuration in DEST/apt (the system's sources and lists are not touched)
#            and only its include/ folder is unpacked into DEST/include.
#   library: the libonnxruntime.so.1.* that the `onnxruntime` Python wheel ships, linked through
#            symlinks DEST/lib/libonnxruntime.so{,.1} (its SONAME is libonnxruntime.so.1).
# The C API is ABI-stable: code built with the 1.21 headers asks for API version 21, which newer
# libraries serve.
#
# Usage: cpp/scripts/fetch_onnxruntime.sh [DEST]      (default: cpp/build/onnxruntime)
# Then:  cmake -S cpp -B cpp/build/release -DONNXRUNTIME_ROOT=DEST
# Env:   ORT_LIBRARY=/path/libonnxruntime.so.1.x to use another library than the wheel's;
#        PYTHON (default python3) to locate the wheel.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$here/build/onnxruntime}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
python="${PYTHON:-python3}"

say() { echo "fetch_onnxruntime: $*" >&2; }

# -- headers ----------------------------------------------------------------
header=onnxruntime_cxx_api.h
if [ -f "$dest/include/onnxruntime/$header" ]; then
    say "headers already in $dest/include"
elif [ -f "/usr/include/onnxruntime/$header" ]; then
    say "using the system's headers (/usr/include/onnxruntime)"
    mkdir -p "$dest/include"
    ln -sfn /usr/include/onnxruntime "$dest/include/onnxruntime"
elif apt-cache policy libonnxruntime-dev 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    say "installing libonnxruntime-dev with apt (this system packages it)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libonnxruntime-dev >/dev/null
    mkdir -p "$dest/include"
    ln -sfn /usr/include/onnxruntime "$dest/include/onnxruntime"
else
    say "downloading libonnxruntime-dev from Debian trixie (private apt state in $dest/apt)"
    apt_dir="$dest/apt"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/deb"
    mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
              /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}' || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    echo "deb [signed-by=$keyring] ${mirror%/} trixie main" > "$apt_dir/sources.list"
    apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
              -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
              -o "Dir::State::status=$apt_dir/status" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "APT::Architecture=amd64")
    : > "$apt_dir/status"
    apt-get "${apt_opts[@]}" -qq update
    (cd "$apt_dir/deb" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev)
    deb="$(ls "$apt_dir"/deb/libonnxruntime-dev_*.deb | head -n1)"
    unpack="$apt_dir/unpack"
    rm -rf "$unpack" && mkdir -p "$unpack"
    dpkg-deb -x "$deb" "$unpack"
    mkdir -p "$dest/include"
    rm -rf "$dest/include/onnxruntime"
    cp -r "$unpack/usr/include/onnxruntime" "$dest/include/onnxruntime"
    rm -rf "$unpack"
    say "headers from $(basename "$deb")"
fi
[ -f "$dest/include/onnxruntime/$header" ] || { say "no $header in $dest/include/onnxruntime"; exit 2; }

# -- library ----------------------------------------------------------------
lib="${ORT_LIBRARY:-}"
if [ -z "$lib" ]; then
    capi="$("$python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null || true)"
    lib="$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | sort -V | tail -n1 || true)"
fi
[ -n "$lib" ] && [ -f "$lib" ] || { say "no libonnxruntime.so.1.* found (pip install onnxruntime, or set ORT_LIBRARY)"; exit 2; }
mkdir -p "$dest/lib"
ln -sfn "$lib" "$dest/lib/libonnxruntime.so.1"
ln -sfn "$dest/lib/libonnxruntime.so.1" "$dest/lib/libonnxruntime.so"
say "library $lib"
echo "$dest"
