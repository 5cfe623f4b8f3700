"""The running llama-servers loaded the CPU kernels this machine is best served by, and never AMX where it cannot run."""

from __future__ import annotations

import pytest

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops import cpu_variants
from athena_inference.workers.ops.provision import llama_server_binary

pytestmark = pytest.mark.integration


def test_every_server_of_the_stack_runs_the_best_variant_this_cpu_allows(stack):
    # The ones still running: other tests stop the servers they started beside the stack's.
    servers = [proc for proc in stack.procs if "-server-" in proc.name and not proc.name.startswith("redis") and proc.popen.poll() is None]
    assert servers
    flags = cpu_variants.cpu_flags()
    amx = cpu_variants.runs_amx(flags)
    loadable = cpu_variants.fit_to_this_cpu(llama_server_binary(load_settings()).parent, amx)
    assert amx or "sapphirerapids" not in loadable
    loaded = {proc.name: cpu_variants.loaded_variant(proc.popen.pid) for proc in servers}
    assert set(loaded.values()) == {cpu_variants.best_variant(flags, loadable)}, loaded
