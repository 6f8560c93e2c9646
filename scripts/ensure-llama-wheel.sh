#!/usr/bin/env bash
# Build llama-cpp-python once for this CPU and these flags, keep the wheel in a wheelhouse keyed on both, and
# install it into the given Python. Idempotent: a second run installs the cached wheel in seconds.
#
# pip's own wheel cache is keyed on the sdist's URL, not on the flags, so it is bypassed: a crashing wheel built
# there before is never reinstalled. The flags and the key: scripts/llama-build-key.sh.
#
# Usage: scripts/ensure-llama-wheel.sh PYTHON VERSION
#   KIT_WHEELHOUSE  where built wheels are kept (default: ~/.cache/deep-chat-kit/wheels)
#   KIT_LLAMA_CMAKE_ARGS  extra CMake arguments (for example -DGGML_BLAS=ON); part of the key
set -euo pipefail
python=$1 version=$2

source "$(dirname "$0")/llama-build-key.sh"
wheelhouse=${KIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/deep-chat-kit/wheels}/llama_cpp_python-$version-$key

wheel() { compgen -G "$wheelhouse/llama_cpp_python-$version-*.whl" | head -n1; }

if [ -z "$(wheel)" ]; then
  echo "building llama-cpp-python $version for this CPU (about 9 minutes on 2 cores), CMAKE_ARGS: $cmake_args" >&2
  mkdir -p "$wheelhouse.partial"
  CMAKE_ARGS="$cmake_args" "$python" -m pip wheel --quiet --no-cache-dir --no-deps \
    --wheel-dir "$wheelhouse.partial" "llama-cpp-python==$version"
  printf 'version=%s\nCMAKE_ARGS=%s\narch=%s\ncompiler=%s\n' "$version" "$cmake_args" "$(uname -m)" "$compiler" \
    >"$wheelhouse.partial/BUILD_INFO"
  rm -rf "$wheelhouse" && mv "$wheelhouse.partial" "$wheelhouse"
fi

# Installed already from this very wheel: nothing to do (a pip call costs seconds; this costs nothing).
marker="$("$python" -c 'import sys; print(sys.prefix)')/.llama-wheel"
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$(wheel)" ]; then
  exit 0
fi
"$python" -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "$(wheel)"
# Its own dependencies and the server extra's, from the registry as usual (never a build of llama.cpp).
"$python" -m pip install --quiet "$(wheel)[server]"
wheel >"$marker"
