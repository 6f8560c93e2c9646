#!/usr/bin/env bash
# Build llama.cpp's own server (the benchmarks' peer) from the llama.cpp sources that the pinned llama-cpp-python
# sdist carries, with the same flags as the kit's wheel (scripts/llama-build-key.sh), once per CPU and flags; print
# the binary's path. For `make bench` only, never for `make test`. A second run prints the cached path at once.
#
# Usage: scripts/ensure-llama-server.sh PYTHON VERSION
#   KIT_LLAMA_SERVER_CACHE  where builds are kept (default: ~/.cache/deep-chat-kit/llama-server)
set -euo pipefail
python=$1 version=$2

source "$(dirname "$0")/llama-build-key.sh"
home=${KIT_LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/deep-chat-kit/llama-server}/$version-$key
binary=$home/llama-server

if [ ! -x "$binary" ]; then
  echo "building llama-server from llama-cpp-python $version's llama.cpp (a few minutes), flags: $cmake_args" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$python" -m pip download --quiet --no-cache-dir --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$version"
  tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
  sources=$work/llama_cpp_python-$version/vendor/llama.cpp
  # eval: cmake_args quotes its multi-word flags.
  eval cmake -S "$sources" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "$cmake_args" \
    >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
  nice cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; exit 1; }
  mkdir -p "$home.partial"
  cp "$work/build/bin/llama-server" "$home.partial/"
  printf 'version=%s\nCMAKE_ARGS=%s\narch=%s\ncompiler=%s\n' "$version" "$cmake_args" "$(uname -m)" "$compiler" \
    >"$home.partial/BUILD_INFO"
  rm -rf "$home" && mv "$home.partial" "$home"
fi
echo "$binary"
