"""Which of llama-server's CPU variants this machine may load: an AMX one only where a tile instruction runs
and the build's own AMX kernels serve a quantised model."""

from __future__ import annotations

import sys
import time

from athena_inference.workers.ops import cpu_variants

VARIANTS = ("haswell", "icelake", "sapphirerapids", "x64")


def folder(tmp_path):
    for name in VARIANTS:
        (tmp_path / f"libggml-cpu-{name}.so").write_bytes(b"\x7fELF")
    (tmp_path / "libggml-base.so").write_bytes(b"\x7fELF")
    return tmp_path


def test_the_amx_variant_is_set_aside_where_amx_cannot_run_and_comes_back_where_it_can(tmp_path):
    bin_dir = folder(tmp_path)
    assert cpu_variants.fit_to_this_cpu(bin_dir, amx=False) == ["haswell", "icelake", "x64"]
    assert (bin_dir / "libggml-cpu-sapphirerapids.so.not-on-this-cpu").exists()
    assert cpu_variants.variants(bin_dir) == sorted(VARIANTS)
    assert cpu_variants.fit_to_this_cpu(bin_dir, amx=True) == sorted(VARIANTS)
    assert cpu_variants.fit_to_this_cpu(bin_dir, amx=True) == sorted(VARIANTS)


def test_whether_the_amx_variant_is_in_place_follows_setting_it_aside(tmp_path):
    bin_dir = folder(tmp_path)
    assert cpu_variants.loaded_amx(bin_dir)
    cpu_variants.fit_to_this_cpu(bin_dir, amx=False)
    assert not cpu_variants.loaded_amx(bin_dir)


def test_a_cpu_that_does_not_list_amx_is_not_probed():
    assert cpu_variants.runs_amx({"avx2", "avx512f"}, probe="raise SystemExit('the probe ran')") is False


def test_a_tile_instruction_the_cpu_refuses_kills_the_probe_child_not_this_process():
    # Without asking Linux for the tile state first, ldtilecfg dies of SIGILL on every CPU,
    # with AMX or without: the real probe's failure, on any machine.
    unasked = cpu_variants._PROBE.replace("if libc.syscall(158, 0x1023, 18) != 0:\n    sys.exit(3)\n", "")
    assert unasked != cpu_variants._PROBE
    assert cpu_variants.runs_amx({"amx_tile", "amx_int8"}, probe=unasked) is False


def test_the_probe_says_yes_only_when_the_child_ran_to_its_end():
    assert cpu_variants.runs_amx({"amx_tile", "amx_int8"}, probe="print('ok')") is True
    assert cpu_variants.runs_amx({"amx_tile", "amx_int8"}, probe="import sys; sys.exit(3)") is False


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_tile amx_int8\n")
    assert cpu_variants.cpu_flags(info) == {"fpu", "avx2", "amx_tile", "amx_int8"}
    assert cpu_variants.cpu_flags(tmp_path / "missing") == set()


def test_the_variant_named_is_the_highest_scoring_one_the_cpu_has_every_flag_for():
    avx2 = set(cpu_variants.NEEDS["haswell"])
    icelake = avx2 | set(cpu_variants.NEEDS["icelake"])
    spr = set(cpu_variants.NEEDS["sapphirerapids"])
    every = list(cpu_variants.NEEDS)
    assert cpu_variants.best_variant(avx2, every) == "haswell"
    assert cpu_variants.best_variant(avx2 | {"avx_vnni"}, every) == "alderlake"
    assert cpu_variants.best_variant(icelake, every) == "icelake"
    assert cpu_variants.best_variant(spr, every) == "sapphirerapids"
    # AMX set aside: the best AVX-512 kernels instead, not a step down to AVX2.
    assert cpu_variants.best_variant(spr, [name for name in every if name != "sapphirerapids"]) == "zen4"
    assert cpu_variants.best_variant(set(), every) == "x64"


SERVES = """#!{python}
import http.server, sys
with open({starts!r}, "a") as out:
    out.write("started\\n")
port = int(sys.argv[sys.argv.index("--port") + 1])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""

DIES = """#!{python}
import os, signal
with open({starts!r}, "a") as out:
    out.write("started\\n")
os.kill(os.getpid(), signal.SIGILL)
"""


def server(tmp_path, script):
    (tmp_path / "bin").mkdir()
    bin_dir = folder(tmp_path / "bin")
    starts = tmp_path / "starts"
    binary = bin_dir / "llama-server"
    binary.write_text(script.format(python=sys.executable, starts=str(starts)))
    binary.chmod(0o755)
    model = tmp_path / "model.Q4_1.gguf"
    model.write_bytes(b"GGUF")
    return binary, model, starts


def test_amx_kernels_that_die_in_the_warm_up_are_judged_once_per_cpu(tmp_path):
    binary, model, starts = server(tmp_path, DIES)
    flags = {"avx2", "amx_tile", "amx_int8"}
    assert cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30) is False
    assert cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30) is False
    assert starts.read_text().count("started") == 1
    # Another CPU (the venv moved) is tried afresh.
    assert cpu_variants.amx_kernels_run(binary, model, flags | {"avx512f"}, timeout_s=30) is False
    assert starts.read_text().count("started") == 2


def test_a_verdict_on_one_builds_amx_kernels_does_not_speak_for_the_next_build(tmp_path):
    binary, model, starts = server(tmp_path, DIES)
    flags = {"avx2", "amx_tile", "amx_int8"}
    assert cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30) is False
    # A reinstall replaces the library and leaves the verdicts file behind.
    cpu_variants.fit_to_this_cpu(binary.parent, amx=True)
    (binary.parent / "libggml-cpu-sapphirerapids.so").write_bytes(b"\x7fELF rebuilt with the stores kept")
    cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30)
    assert starts.read_text().count("started") == 2


def test_amx_kernels_that_serve_the_model_are_kept_and_the_server_is_stopped(tmp_path):
    binary, model, starts = server(tmp_path, SERVES)
    flags = {"avx2", "amx_tile", "amx_int8"}
    assert cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30) is True
    assert cpu_variants.amx_kernels_run(binary, model, flags, timeout_s=30) is True
    assert starts.read_text().count("started") == 1
    # Tried with the AMX variant in place, whatever an earlier fit had set aside.
    assert "sapphirerapids" in cpu_variants.fit_to_this_cpu(binary.parent, amx=True)


def test_a_server_that_never_answers_counts_as_not_running(tmp_path):
    binary, model, _ = server(tmp_path, "#!/bin/sh\nexec sleep 60\n")
    started = time.monotonic()
    assert cpu_variants._serves(binary, model, timeout_s=1.0) is False
    assert time.monotonic() - started < 10
