"""The `athena-inference` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from athena_client.errors import AthenaError, ConfigurationError
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


def cmd_models(args: argparse.Namespace) -> int:
    from athena_inference.workers import model_download

    settings = get_settings()
    specs = model_download.PRODUCTION_MODELS
    if args.list:
        for spec in specs:
            print(f"{spec.name:24} {spec.serves:20} {spec.repo} ({', '.join(f.path for f in spec.files)})")
        return 0
    if args.names:
        known = {spec.name: spec for spec in specs}
        unknown = sorted(set(args.names) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
        specs = [known[name] for name in args.names]
    token = settings.model_hub_token.get_secret_value() if settings.model_hub_token else None
    downloader = model_download.Downloader(settings.model_hub_url, args.dest or settings.production_models_dir, token=token)
    try:
        done = model_download.download_models(downloader, specs)
    finally:
        downloader.close()
    for name, paths in done.items():
        print(f"{name}: {paths[0]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.what == "redis":
        _exec(processes.redis_argv(settings, provision.redis_server_binary()))
    queue = SERVED[args.what]
    embeddings = queue in processes.EMBEDDING_QUEUES
    model = provision.embedding_model(settings) if embeddings else provision.reasoning_model(settings)
    os.nice(processes.server_settings(queue, settings).nice)
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
        if not settings.flower_unauthenticated:
            print(
                "error: set ATHENA_FLOWER_BASIC_AUTH=user:password (`up` sets one for you); Flower shows every "
                "task's arguments and results, so it starts without a password only with ATHENA_FLOWER_UNAUTHENTICATED=true",
                file=sys.stderr,
            )
            return 2
        print("warning: Flower runs WITHOUT authentication (ATHENA_FLOWER_UNAUTHENTICATED=true)", file=sys.stderr)
    auth = settings.flower_basic_auth.get_secret_value() if settings.flower_basic_auth else None
    _exec(processes.flower_argv(settings, auth))
    return 1


def cmd_exporter(args: argparse.Namespace) -> int:
    import time

    from prometheus_client import CollectorRegistry, start_http_server

    from athena_inference.config.celery import app
    from athena_inference.workers.prometheus import AthenaCollector
    from athena_inference.workers.queue_depth import queue_depth

    settings = get_settings()
    connection = app.connection_for_read()
    registry = CollectorRegistry()
    registry.register(
        AthenaCollector(
            MetricsStore.from_url(settings.metrics_redis_url, window=settings.metrics_window),
            lambda: {q.value: queue_depth(connection, q.value) for q in Queue},
        )
    )
    start_http_server(settings.exporter_port, settings.exporter_address, registry=registry)
    print(f"athena exporter: http://{settings.exporter_address}:{settings.exporter_port}/metrics", flush=True)
    while True:
        time.sleep(3600)


def cmd_health(args: argparse.Namespace) -> int:
    from athena_client.client import AthenaClient

    settings = get_settings()
    with AthenaClient(settings.broker_url, settings.result_backend) as client:
        report = client.health(timeout=args.timeout)
    wanted = args.queue or [q.value for q in Queue]
    healthy = report.healthy(wanted)
    if args.json:
        print(json.dumps({"healthy": healthy, **report.model_dump(mode="json")}, indent=2))
        return 0 if healthy else 1
    print(f"broker {settings.broker_url.rsplit('@', 1)[-1]}: {'ok' if report.broker_ok else report.broker_detail}")
    for name in wanted:
        queue = report.queues[name]
        server = {None: "-", True: "ready", False: "NOT READY"}[queue.server_ready]
        workers = ", ".join(queue.workers) or "NO WORKERS"
        extra = f" ({queue.model})" if queue.model else (f" ({queue.detail})" if queue.detail and queue.server_ready is False else "")
        print(f"{name:16} {'ok ' if queue.healthy else 'BAD'}  workers: {workers}; server: {server}{extra}")
    if Queue.COMPRESSION.value in wanted:
        c = report.compression
        print(f"{'compressor':16} {'ok ' if c.ready else 'BAD'}  {c.method or ''} {c.reason or ''}".rstrip())
    print("healthy" if healthy else "UNHEALTHY")
    return 0 if healthy else 1


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

    p = sub.add_parser("models", help="download the production models (resumable, size and SHA-256 checked)")
    p.add_argument("names", nargs="*", help="models to fetch (default: all; see --list)")
    p.add_argument("--list", action="store_true", help="list the production models and exit")
    p.add_argument("--dest", type=Path, help="folder for the files (default: ATHENA_MODELS_DIR)")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("serve", help="run one server of the stack in the foreground (used by the Procfile)")
    p.add_argument("what", choices=["redis", *SERVED])
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("worker", help="run the Celery worker of one queue, concurrency = its server's slots")
    p.add_argument("queue", choices=[q.value for q in Queue])
    p.add_argument("--node-suffix", default="%h", help="worker node name after '<queue>@' (default: host name)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("health", help="per queue: broker, workers, server /health and model, compressor; exit 1 if anything is unhealthy")
    p.add_argument("--queue", action="append", choices=[q.value for q in Queue], help="check only this queue (repeatable)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_health)

    p = sub.add_parser("flower", help="run Flower with basic auth from ATHENA_FLOWER_BASIC_AUTH")
    p.set_defaults(run=cmd_flower)

    reembed_command.add_parser(sub)

    p = sub.add_parser("exporter", help="serve per-kind histograms, tokens/s, totals and queue depths for Prometheus")
    p.set_defaults(run=cmd_exporter)

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
