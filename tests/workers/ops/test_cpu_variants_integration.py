"""The running llama-servers loaded the CPU kernels this machine is best served by, and never AMX where it cannot run;
the variants kept serve a quantised model."""

from __future__ import annotations

import pytest

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops import cpu_variants
from athena_inference.workers.ops.provision import fit_cpu_variants, llama_server_binary, smollm2_gguf

pytestmark = pytest.mark.integration


def test_every_server_of_the_stack_runs_the_best_variant_this_cpu_allows(stack):
    # The ones still running: other tests stop the servers they started beside the stack's.
    servers = [proc for proc in stack.procs if "-server-" in proc.name and not proc.name.startswith("redis") and proc.popen.poll() is None]
    assert servers
    flags = cpu_variants.cpu_flags()
    loadable = fit_cpu_variants(llama_server_binary(load_settings()), load_settings(), flags)
    assert cpu_variants.runs_amx(flags) or "sapphirerapids" not in loadable
    loaded = {proc.name: cpu_variants.loaded_variant(proc.popen.pid) for proc in servers}
    assert set(loaded.values()) == {cpu_variants.best_variant(flags, loadable)}, loaded


def test_the_kept_variants_get_a_quantised_model_through_its_warm_up():
    # Q4_1 weights go to the AMX kernels where that variant is kept: the pinned build's crash there
    # (an emptied tile configuration) happens in this warm-up, before /health answers.
    settings = load_settings()
    binary = llama_server_binary(settings)
    assert cpu_variants._serves(binary, smollm2_gguf(settings), timeout_s=120)


def test_the_default_builds_amx_kernels_serve_a_quantised_model_where_the_cpu_runs_amx():
    # GCC 12 drops the stores of the tile configuration unless dead-store elimination is off
    # (config/settings.py: llama_cmake_args); the AMX variant then dies of SIGILL in this warm-up.
    flags = cpu_variants.cpu_flags()
    if not cpu_variants.runs_amx(flags):
        pytest.skip("this CPU (or its VM) runs no AMX tile instruction")
    settings = load_settings()
    assert "sapphirerapids" in fit_cpu_variants(llama_server_binary(settings), settings, flags)
