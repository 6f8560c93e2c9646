"""Which CPU features the installed llama.cpp was built to use, and whether that build can run on this CPU.

llama.cpp's AMX kernels (compiled in by `-march=native` on an Intel Xeon with AMX) die with SIGILL on the first
large matrix product (llama.cpp PR 26954: a per-thread tile permission and a tile configuration the compiler
drops). The kit's set-up builds without them (scripts/ensure-llama-wheel.sh); this module tells whether the
llama.cpp actually installed was built that way, for `python -m kit doctor` and the engine's start-up log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# How the kit's set-up builds llama-cpp-python, for the warning's fix.
SAFE_BUILD = (
    "rebuild llama-cpp-python without AMX: `make setup` does it in this repository, or in your own environment "
    "CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
    "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
    "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python"
)


@dataclass(frozen=True)
class LlamaBuild:
    """What llama.cpp reports of its build (`llama_print_system_info()`) beside what this CPU offers."""

    system_info: str
    features: tuple[str, ...]  # the CPU features llama.cpp was built to use, e.g. ("AVX2", "AVX512", ...)
    cpu_has_amx: bool

    @property
    def uses_amx(self) -> bool:
        return any(name.startswith("AMX") for name in self.features)

    @property
    def warning(self) -> str:
        """Why this build would crash here and what to do, or "" when it is safe."""
        if not (self.uses_amx and self.cpu_has_amx):
            return ""
        return (
            "llama.cpp was built with AMX kernels on a CPU with AMX: its AMX code dies with 'Illegal instruction' "
            f"(SIGILL) or a segmentation fault on the first long prompt or batch; {SAFE_BUILD}"
        )

    def summary(self) -> str:
        """One line for a log or a report: the features it runs with."""
        return "llama.cpp CPU features: " + (" ".join(self.features) or "none reported")


def built_features(system_info: str) -> tuple[str, ...]:
    """The features switched on in a `llama_print_system_info()` line (`NAME = 1` pairs), in its order.

    >>> built_features("CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | REPACK = 1 |")
    ('SSE3', 'AVX2', 'AMX_INT8', 'REPACK')
    """
    return tuple(name for name, value in re.findall(r"([A-Z][A-Z0-9_]*) = (\d+)", system_info) if value != "0")


def cpu_has_amx(cpuinfo: str) -> bool:
    """Whether a /proc/cpuinfo text lists AMX tiles (`amx_tile`): where llama.cpp's AMX code would run.

    >>> cpu_has_amx("flags\\t\\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8")
    True
    >>> cpu_has_amx("flags\\t\\t: fpu avx2")
    False
    """
    return re.search(r"^(flags|Features)\s*:.*\bamx_tile\b", cpuinfo, re.MULTILINE) is not None


def inspect_llama_build(cpuinfo_path: Path = Path("/proc/cpuinfo")) -> LlamaBuild | None:
    """The installed llama.cpp's build beside this CPU, or None when llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    try:
        cpuinfo = cpuinfo_path.read_text(errors="replace")
    except OSError:  # not Linux: no AMX question to answer
        cpuinfo = ""
    return LlamaBuild(info, built_features(info), cpu_has_amx(cpuinfo))
