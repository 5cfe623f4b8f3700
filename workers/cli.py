"""The `athena-inference` command."""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from athena_client.errors import AthenaError
from athena_client.routes import Queue
from athena_inference.config.settings import Settings, get_settings
from athena_inference.workers import compressor_models, processes, provision, reembed_command
from athena_inference.workers.llama_server import LlamaServer
from athena_inference.workers.metrics import KindStats, MetricsStore

SERVED = {"embeddings": Queue.EMBEDDINGS, "embeddings-bulk": Queue.EMBEDDINGS_BULK, "reasoning": Queue.REASONING}


def _exec(argv: list[str]) -> None:
    # Replace this process, so the process manager's signals reach the server itself.
    sys.stdout.flush()
    os.execv(argv[0], argv)


def cmd_up(args: argparse.Namespace) -> int:
    from athena_inference.workers.stack import up

    return up(get_settings(), check_only=args.check)


def cmd_provision(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.llmlingua2:
        print(f"llmlingua2_model: {compressor_models.fetch_llmlingua2(settings)}")
    done = provision.provision(settings)
    for name, path in done.model_dump().items():
        print(f"{name}: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.what == "redis":
        _exec(processes.redis_argv(settings, provision.redis_server_binary()))
    queue = SERVED[args.what]
    embeddings = queue in processes.EMBEDDING_QUEUES
    model = provision.embedding_model(settings) if embeddings else provision.reasoning_model(settings)
    os.nice(processes.server_nice(queue, settings))
    cpus = processes.server_cpus(queue, settings, sorted(os.sched_getaffinity(0)))
    if cpus:
        os.sched_setaffinity(0, cpus)
    _exec(processes.llama_server_argv(queue, settings, provision.llama_server_binary(settings), model))
    return 1


def cmd_worker(args: argparse.Namespace) -> int:
    settings, queue = get_settings(), Queue(args.queue)
    _warn_if_slots_differ(queue, settings)
    # The compression worker's processes load their model at start.
    os.environ[processes.WORKER_QUEUE_ENV] = queue.value
    _exec(processes.worker_argv(queue, settings, node_suffix=args.node_suffix))
    return 1


def _warn_if_slots_differ(queue: Queue, settings: Settings) -> None:
    if queue not in processes.MODEL_ALIASES:
        return
    url = processes.server_url(queue, settings)
    server = LlamaServer(url, timeout=httpx.Timeout(2.0))
    slots = server.slots()
    server.close()
    concurrency = processes.worker_concurrency(queue, settings)
    if slots is not None and slots != concurrency:
        setting = f"ATHENA_{queue.value.upper()}_SLOTS"
        print(
            f"warning: {url} has {slots} slots but the {queue.value} worker runs {concurrency} "
            f"processes; set {setting}={slots} so the backlog waits in the queue, not in the server",
            file=sys.stderr,
        )


def cmd_flower(args: argparse.Namespace) -> int:
    settings = get_settings()
    if settings.flower_basic_auth is None:
        print("error: set ATHENA_FLOWER_BASIC_AUTH=user:password (`up` sets one for you)", file=sys.stderr)
        return 2
    _exec(processes.flower_argv(settings, settings.flower_basic_auth.get_secret_value()))
    return 1


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def format_stats(stats: dict[str, KindStats]) -> str:
    header = ("kind", "count", "ok", "fail", "min", "avg", "p50", "p95", "max", "tok/s", "calls/s")
    rows = [header]
    for kind, s in stats.items():
        lat = s.latency_ms
        row = (kind, s.count, s.success, s.failures, lat.min, lat.avg, lat.p50, lat.p95, lat.max,
               s.tokens_per_second, s.rate_per_s)
        rows.append(tuple(_fmt(v) for v in row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)])
        for row in rows
    ]
    window = next(iter(stats.values())).window
    totals = [f"{kind}: " + ", ".join(f"{k} {v:g}" for k, v in s.totals.items()) for kind, s in stats.items() if s.totals]
    return "\n".join(lines + totals) + f"\n(latencies in ms over the last {window} successful calls per kind)"


def cmd_metrics(args: argparse.Namespace) -> int:
    settings = get_settings()
    store = MetricsStore.from_url(settings.metrics_redis_url, window=settings.metrics_window)
    if args.reset:
        store.reset()
        print("metrics reset")
        return 0
    stats = store.get_all_stats()
    if args.json:
        print(json.dumps({kind: s.model_dump() for kind, s in stats.items()}, indent=2))
    elif not stats:
        print("no calls recorded yet")
    else:
        print(format_stats(stats))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="athena-inference", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="provision and run the whole stack, then show a job through every queue")
    p.add_argument("--check", action="store_true", help="stop everything after the demo and exit 0 if it worked")
    p.set_defaults(run=cmd_up)

    p = sub.add_parser("provision", help="build llama-server and prepare the default models (cached)")
    p.add_argument("--llmlingua2", action="store_true", help="also fetch the LLMLingua-2 model (needs the model hub)")
    p.set_defaults(run=cmd_provision)

    p = sub.add_parser("serve", help="run one server of the stack in the foreground (used by the Procfile)")
    p.add_argument("what", choices=["redis", *SERVED])
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("worker", help="run the Celery worker of one queue, concurrency = its server's slots")
    p.add_argument("queue", choices=[q.value for q in Queue])
    p.add_argument("--node-suffix", default="%h", help="worker node name after '<queue>@' (default: host name)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("flower", help="run Flower with basic auth from ATHENA_FLOWER_BASIC_AUTH")
    p.set_defaults(run=cmd_flower)

    reembed_command.add_parser(sub)

    p = sub.add_parser("metrics", help="per-kind counts, failures, latency percentiles and tokens/s from Redis")
    p.add_argument("--json", action="store_true")
    p.add_argument("--reset", action="store_true")
    p.set_defaults(run=cmd_metrics)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except AthenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
