"""The bulk embedding server's knobs, each beside the in-process torch peer, in one run.

Starts one llama-server per configuration (at nice 19, unpinned, as the stack
runs the bulk lane), sends it the same generated memories in batched requests
and reports texts/s. The peer is what a user would write instead: the same
all-MiniLM-L6-v2 checkpoint in torch, in this process, mean pooling over
length-sorted batches of 64 (sentence-transformers' recipe), with the same
thread count. Each server row carries its ratio to the peer on as many threads.

Rows: the stack's default first (one thread, -b = -ub 512, one slot, 128
texts a request, F16), then one knob changed per row: every core; physical
batch -b = -ub (256 .. 2048); slots (-np); request size; model file type
(Q8_0, F32). The two thread rows run again with one core kept busy at nice 10
(a busy loop pinned to the last CPU, as a generation on the reasoning
server's core would be): the bulk server runs at nice 19, so that is what
"takes only CPU nothing else wants" costs it.

    .venv/bin/python -m bench.bulk_lane [--texts 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import httpx
from pydantic import BaseModel

from athena_inference.config.settings import load_settings
from athena_inference.workers.ops.provision import embedding_model_as, embedding_source_model, provision

from bench.reembed import memories
from bench.torch_peer import CPUS, TorchPeer, mean_cosine
from tests.harness import free_port, wait_for


class Config(BaseModel):
    threads: int = 1
    ubatch: int = 512
    slots: int = 1
    request: int = 128
    outtype: str = "f16"
    busy_core: bool = False

    def label(self) -> str:
        busy = ", one core busy" if self.busy_core else ""
        return f"-t {self.threads} -b/-ub {self.ubatch} -np {self.slots}, {self.request}/request, {self.outtype.upper()}{busy}"


def sweep() -> list[Config]:
    base = Config()
    rows = [base, base.model_copy(update={"threads": CPUS})]
    rows += [base.model_copy(update={"ubatch": ub}) for ub in (256, 1024, 2048)]
    rows += [base.model_copy(update={"slots": np}) for np in (2, 4)]
    rows += [base.model_copy(update={"request": n}) for n in (32, 256)]
    rows += [base.model_copy(update={"outtype": t}) for t in ("q8_0", "f32")]
    rows += [rows[0].model_copy(update={"busy_core": True}), rows[1].model_copy(update={"busy_core": True})]
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
            "-b", str(config.ubatch), "-ub", str(config.ubatch), "-c", str(config.ubatch * config.slots),
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


def server_texts_per_s(
    url: str, texts: list[str], request: int, budget_s: Optional[float] = None
) -> tuple[float, list[list[float]], bool]:
    """texts/s over the requests answered; past `budget_s` it stops (True) and
    rates what was done, since a stalled server may take minutes a request."""
    vectors: list[list[float]] = []
    with httpx.Client(base_url=url, timeout=budget_s or 600) as client:
        client.post("/v1/embeddings", json={"input": texts[:1]}).raise_for_status()  # warm-up
        started = time.perf_counter()
        for start in range(0, len(texts), request):
            try:
                answer = client.post("/v1/embeddings", json={"input": texts[start : start + request]})
            except httpx.TimeoutException:
                return len(vectors) / (time.perf_counter() - started), vectors, True
            answer.raise_for_status()
            vectors += [item["embedding"] for item in answer.json()["data"]]
            if budget_s is not None and time.perf_counter() - started > budget_s:
                return len(vectors) / (time.perf_counter() - started), vectors, True
        return len(texts) / (time.perf_counter() - started), vectors, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the rows here")
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
    for config in sweep():
        server = LlamaUnderTest(binary, embedding_model_as(settings, config.outtype), config, logs / "bulk-lane.log")
        try:
            # With a core busy a server that yields can crawl: two minutes at most.
            with BusyCore() if config.busy_core else contextlib.nullcontext():
                rate, vectors, stopped = server_texts_per_s(server.url, texts, config.request, 120 if config.busy_core else None)
        finally:
            server.stop()
        rows.append({
            "config": config.label() + (" (stopped after 120 s)" if stopped else ""), "texts_per_s": round(rate, 1),
            "vs_torch_same_threads": round(rate / peers[config.threads], 2),
            "cosine_to_torch": round(mean_cosine(vectors, reference[: len(vectors)]), 5) if vectors else None,
        })
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.texts} memories of 8-60 words; {CPUS} CPUs ({_cpu_model()})")
    print("| torch in-process | " + " | ".join(f"{t} thread(s): {r:.0f} texts/s" for t, r in peers.items()) + " |\n")
    print("| bulk llama-server | texts/s | vs torch on as many threads | mean cosine to torch |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['config']} | {row['texts_per_s']:.0f} | {row['vs_torch_same_threads']:.2f}x | {row['cosine_to_torch']} |")
    if args.json:
        args.json.write_text(json.dumps({"torch": peers, "rows": rows}, indent=2))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
