"""The installed llama.cpp runs on this CPU: the workloads that died on a build with AMX kernels.

Each runs in a child process, so a crashing build fails this test with a clear message instead of killing the
whole test run. The first sign of it used to be `Fatal Python error: Illegal instruction` in
tests/test_batching.py, and no report at all; the wheel built with AMX here died with SIGSEGV on the prompt read.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kit.model.cpu import LlamaBuild, built_features, cpu_has_amx, inspect_llama_build
from kit.serving.doctor import diagnose_here

# A 500-token prompt read through llama-cpp-python's own API, then 8 sequences decoded in one batch by the
# kit's engine: the two paths that reached ggml_backend_amx_mul_mat on a Xeon with AMX.
WORKLOAD = textwrap.dedent(
    """
    import threading
    from llama_cpp import Llama
    from kit.model.engine import engine_for
    from kit.model.settings import LlamaSettings, default_model_path

    llama = Llama(model_path=str(default_model_path()), n_ctx=1024, n_threads=2, verbose=False)
    tokens = llama.tokenize(("The river runs past the old mill. " * 80).encode())[:500]
    assert len(tokens) == 500, len(tokens)
    llama.eval(tokens)
    print("prompt read", llama.n_tokens, flush=True)

    engine = engine_for(LlamaSettings())
    barrier = threading.Barrier(8)
    replies = [""] * 8

    def ask(i):
        barrier.wait()
        question = [{"role": "user", "content": f"Say a word about the number {i}."}]
        replies[i] = "".join(engine.chat(question, max_tokens=16, temperature=0, seed=1))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(replies), replies
    print("batched", len(replies), flush=True)
    """
)


def test_a_long_prompt_read_and_eight_batched_sequences_run_in_a_child_process() -> None:
    child = subprocess.run([sys.executable, "-c", WORKLOAD], capture_output=True, text=True, timeout=240)
    if child.returncode < 0:  # killed by a signal: SIGILL, or SIGSEGV as seen here from the AMX tile loads
        build = inspect_llama_build()
        pytest.fail(
            f"llama.cpp died with {signal.Signals(-child.returncode).name} on this CPU after "
            f"{child.stdout.strip() or 'nothing'}: it runs instructions this CPU cannot run as built. "
            f"{build.summary() if build else ''}. {build.warning if build else ''}"
        )
    assert child.returncode == 0, f"exit {child.returncode}\n{child.stdout}\n{child.stderr[-3000:]}"
    assert "prompt read 500" in child.stdout, child.stdout
    assert "batched 8" in child.stdout, child.stdout


def test_the_installed_build_has_no_amx_kernels_on_x86_and_keeps_the_native_vector_features() -> None:
    build = inspect_llama_build()
    assert build is not None
    assert not build.warning, build.warning
    assert not build.uses_amx, build.features  # the set-up switches AMX off on every x86 machine
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if " avx2 " in cpuinfo:  # -march=native still gives what this CPU has beside AMX
        assert "AVX2" in build.features, build.features
    if " avx512f " in cpuinfo:
        assert "AVX512" in build.features, build.features


def test_a_build_with_amx_on_a_cpu_with_amx_is_a_failed_doctor_check_with_the_fix() -> None:
    info = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    crashing = LlamaBuild(info, built_features(info), cpu_has_amx("flags\t: avx512f amx_tile amx_int8"))
    assert "Illegal instruction" in crashing.warning and "-mno-amx-int8" in crashing.warning
    # The same build on a CPU without AMX never takes the AMX path; a build without AMX is safe anywhere.
    assert not LlamaBuild(info, crashing.features, cpu_has_amx("flags\t: avx512f")).warning
    assert not LlamaBuild("CPU : AVX2 = 1 |", ("AVX2",), True).warning


def test_doctor_without_a_url_reports_the_features_llama_cpp_runs_with() -> None:
    report = diagnose_here()
    finding = report.finding("llama.cpp build")
    assert finding.ok, finding
    assert "llama.cpp CPU features:" in finding.detail and "AVX" in finding.detail
    cli = subprocess.run([sys.executable, "-m", "kit", "doctor"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert "[ok] llama.cpp build: llama.cpp CPU features:" in cli.stdout, cli.stdout
