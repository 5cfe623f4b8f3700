"""The bulk embedding server's knobs, each beside the in-process torch peer, in one run.

Starts one llama-server per configuration (at nice 19, unpinned, as the stack
runs the bulk lane), sends it the same generated memories in batched requests
and reports texts/s. The peer is what a user would write instead: the same
all-MiniLM-L6-v2 checkpoint in torch, in this process, mean pooling over
length-sorted batches of 64 (sentence-transformers' recipe), with the same
thread count. Each server row carries its ratio to the peer on as many threads,
and the mean and lowest cosine of its vectors to the peer's.

Rows: the stack's default first (one thread, -b = -ub 512, --parallel
ATHENA_EMBEDDING_TEXTS_PER_PASS, 128 texts a request, the default model file,
the best CPU kernels this build has here), then one knob changed per row:
every core, as one server's threads or as one single-thread server per core;
the CPU kernels (the AMX variant set aside, where the machine runs it);
flash attention off; physical batch -b = -ub (256 .. 2048); texts read in one
pass (-np); request size; model file type (F16, BF16, F32). The three thread
rows run again with one core kept busy at nice 10 (a busy loop pinned to the
last CPU, as a generation on the reasoning server's core would be): the bulk
server runs at nice 19, so that is what "takes only CPU nothing else wants"
costs it.

    .venv/bin/python -m bench.bulk_lane [--texts 2000] [--only cores,kernels,busy] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
from pydantic import BaseModel

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.local_stack import free_port, wait_for
from athena_inference.workers.ops import cpu_variants
from athena_inference.workers.ops.provision import EMBEDDING_OUTTYPE, embedding_model_as, embedding_source_model, provision

from bench.direct import direct_texts_per_s
from bench.reembed import memories
from bench.torch_peer import CPUS, TorchPeer, cosines_to


class Config(BaseModel):
    threads: int = 1
    ubatch: int = 512
    # llama-server's --parallel: the texts it reads in one pass.
    slots: int = load_settings().embedding_texts_per_pass
    request: int = 128
    outtype: str = EMBEDDING_OUTTYPE
    # False: the AMX variant is set aside, so the server loads the AVX-512 one.
    amx: bool = True
    flash_attn: str = "auto"
    # Copies of the server, each on its own port with these settings, fed side by side.
    servers: int = 1
    busy_core: bool = False

    @property
    def threads_in_all(self) -> int:
        return self.threads * self.servers

    def label(self) -> str:
        copies = f"{self.servers} servers of " if self.servers > 1 else ""
        busy = ", one core busy" if self.busy_core else ""
        kernels = "" if self.amx else ", AMX set aside"
        attention = "" if self.flash_attn == "auto" else f", -fa {self.flash_attn}"
        return (f"{copies}-t {self.threads} -b/-ub {self.ubatch} -np {self.slots}, {self.request}/request, "
                f"{self.outtype.upper()}{kernels}{attention}{busy}")


def sweep() -> list[tuple[str, Config]]:
    """(the knob a row turns, the row)."""
    base = Config()
    cores = [("cores", base), ("cores", base.model_copy(update={"threads": CPUS})), ("cores", base.model_copy(update={"servers": CPUS}))]
    rows = list(cores)
    rows += [("kernels", base.model_copy(update={"amx": False})), ("kernels", base.model_copy(update={"amx": False, "servers": CPUS}))]
    rows += [("attention", base.model_copy(update={"flash_attn": "off"}))]
    rows += [("batch", base.model_copy(update={"ubatch": ub})) for ub in (256, 1024, 2048)]
    rows += [("slots", base.model_copy(update={"slots": np})) for np in (1, 2, 8) if np != base.slots]
    rows += [("request", base.model_copy(update={"request": n})) for n in (32, 256)]
    files = [t for t in ("q8_0", "f16", "bf16", "f32") if t != base.outtype]
    rows += [("file", base.model_copy(update={"outtype": t})) for t in files]
    rows += [("file", base.model_copy(update={"outtype": t, "amx": False})) for t in files[:1]]
    rows += [("busy", row.model_copy(update={"busy_core": True})) for _, row in cores]
    return rows


class BusyCore:
    """A busy loop at nice 10 pinned to the last CPU, for the length of a `with`."""

    def __enter__(self) -> "BusyCore":
        self.popen = subprocess.Popen(["nice", "-n", "10", "taskset", "-c", str(CPUS - 1), sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *_: object) -> None:
        self.popen.kill()
        self.popen.wait()


class LlamaUnderTest:
    """One llama-server on a free port, at nice 19 like the bulk lane."""

    def __init__(self, binary: Path, model: Path, config: Config, log: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        argv = [
            "nice", "-n", "19", str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1],
            "-t", str(config.threads), "--embedding", "--pooling", "mean", "-np", str(config.slots),
            "-b", str(config.ubatch), "-ub", str(config.ubatch), "-c", str(config.ubatch * config.slots), "-fa", config.flash_attn,
        ]
        self._log = log.open("w")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._ready, f"llama-server ({config.label()})", 120)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # Still busy with a request it will not finish soon.
            self.popen.kill()
            self.popen.wait()
        self._log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--only", help="run only the rows of these knobs: cores,kernels,attention,batch,slots,request,file,busy")
    args = parser.parse_args()

    settings = load_settings()
    binary = provision(settings).llama_server
    texts = memories(args.texts, seed=3)
    peer = TorchPeer(embedding_source_model(settings))
    peers: dict[int, float] = {}
    reference: list[list[float]] = []
    for threads in sorted({1, CPUS}):
        peers[threads], reference = peer.texts_per_s(texts, threads)
    rows = []
    logs = settings.cache_dir / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    for knob, config in sweep():
        if args.only and knob not in args.only.split(","):
            continue
        model = embedding_model_as(settings, config.outtype)
        with_amx = cpu_variants.loaded_amx(binary.parent)
        # A row without the AMX kernels sets their library aside while its servers load it, and only then.
        cpu_variants.fit_to_this_cpu(binary.parent, amx=with_amx and config.amx)
        try:
            servers = [LlamaUnderTest(binary, model, config, logs / f"bulk-lane-{i}.log") for i in range(config.servers)]
            kernels = cpu_variants.loaded_variant(servers[0].popen.pid)
        finally:
            cpu_variants.fit_to_this_cpu(binary.parent, amx=with_amx)
        try:
            # With a core busy a server that yields can crawl: two minutes at most.
            with BusyCore() if config.busy_core else contextlib.nullcontext():
                rate, vectors, stopped = direct_texts_per_s(
                    [server.url for server in servers], texts, config.request, 120 if config.busy_core else None
                )
        finally:
            for server in servers:
                server.stop()
        cosines = cosines_to(vectors, reference[: len(vectors)]) if vectors else None
        rows.append({
            "config": config.label() + (" (stopped after 120 s)" if stopped else ""), "kernels": kernels, "texts_per_s": round(rate, 1),
            "vs_torch_same_threads": round(rate / peers[config.threads_in_all], 2),
            "cosine_to_torch": round(float(cosines.mean()), 5) if cosines is not None else None,
            "lowest_cosine_to_torch": round(float(cosines.min()), 5) if cosines is not None else None,
        })
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.texts} memories of 8-60 words; {CPUS} CPUs ({_cpu_model()})")
    print("| torch in-process | " + " | ".join(f"{t} thread(s): {r:.0f} texts/s" for t, r in peers.items()) + " |\n")
    print("| bulk llama-server | CPU kernels | texts/s | vs torch on as many threads | cosine to torch, mean (lowest) |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['kernels']} | {row['texts_per_s']:.0f} | {row['vs_torch_same_threads']:.2f}x "
              f"| {row['cosine_to_torch']} ({row['lowest_cosine_to_torch']}) |")
    if args.json:
        args.json.write_text(json.dumps({"torch": peers, "rows": rows}, indent=2))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
