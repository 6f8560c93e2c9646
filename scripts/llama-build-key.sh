# Sourced by ensure-llama-wheel.sh and ensure-llama-server.sh: the CMake flags llama.cpp is built with here and
# the cache key of a build (what it was built from and with, and for which CPU: a native build runs only where its
# instruction set does). Sets cmake_args and key; needs $version.
#
# Why the flags: llama.cpp's AMX kernels die with SIGILL on Intel Xeons with AMX (Sapphire Rapids and later;
# llama.cpp PR 26954), and -march=native turns them on. GCC keeps explicit -mno-* flags over -march=native's, so on
# x86 the build switches AMX off and keeps every other native feature (AVX2, AVX512, VNNI, BF16).
#   KIT_LLAMA_CMAKE_ARGS  extra CMake arguments (for example -DGGML_BLAS=ON); part of the key
cmake_args=${KIT_LLAMA_CMAKE_ARGS:-}
case "$(uname -m)" in
  x86_64 | amd64 | i?86)
    no_amx='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'
    cmake_args="-DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx' $cmake_args"
    ;;
esac
cpu_features=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | tr ' ' '\n' | sort -u | tr '\n' ' ')
compiler=$(${CC:-cc} --version 2>/dev/null | head -n1 || echo unknown)
key=$(printf '%s\n' "$version" "$cmake_args" "$(uname -m)" "$cpu_features" "$compiler" | sha256sum | cut -c1-16)
