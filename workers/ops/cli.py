"""The `athena-inference` command: one click group, each command a thin call into `workers/ops`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import click

from athena_client.contract.errors import AthenaError, ConfigurationError
from athena_client.contract.routes import Queue
from athena_inference.config.settings import get_settings
from athena_inference.workers.ops import launch
from athena_inference.workers.ops.reembed_cli import reembed

QUEUES = click.Choice([q.value for q in Queue])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Athena's model calls as Celery tasks in front of llama.cpp servers."""


@cli.command()
@click.option("--check", is_flag=True, help="Stop everything after the demo and exit 0 if it worked.")
@click.option("--no-demo", is_flag=True, help="Skip the demo: the stack is up once every worker and server answers.")
def up(check: bool, no_demo: bool) -> int:
    """Provision and run the whole stack, then show a job through every queue."""
    from athena_inference.workers.ops.stack import up as run_stack

    return run_stack(get_settings(), check_only=check, show_demo=not no_demo)


@cli.command()
@click.option("--llmlingua2", is_flag=True, help="Also fetch the LLMLingua-2 model (needs the model hub).")
def provision(llmlingua2: bool) -> int:
    """Build llama-server and prepare the default models (cached)."""
    from athena_inference.workers.ops import compressor_models
    from athena_inference.workers.ops.provision import provision as provision_all

    settings = get_settings()
    if llmlingua2:
        click.echo(f"llmlingua2_model: {compressor_models.fetch_llmlingua2(settings)}")
    for name, path in provision_all(settings).model_dump().items():
        click.echo(f"{name}: {path}")
    return 0


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--list", "list_only", is_flag=True, help="List the production models and exit.")
@click.option("--dest", type=click.Path(path_type=Path), help="Folder for the files (default: ATHENA_MODELS_DIR).")
def models(names: tuple[str, ...], list_only: bool, dest: Optional[Path]) -> int:
    """Download the production models (resumable, size and SHA-256 checked)."""
    from athena_inference.workers.ops import model_download

    settings = get_settings()
    specs = model_download.PRODUCTION_MODELS
    if list_only:
        for spec in specs:
            click.echo(f"{spec.name:24} {spec.serves:20} {spec.repo} ({', '.join(f.path for f in spec.files)})")
        return 0
    if names:
        known = {spec.name: spec for spec in specs}
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ConfigurationError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
        specs = [known[name] for name in names]
    token = settings.model_hub_token.get_secret_value() if settings.model_hub_token else None
    downloader = model_download.Downloader(settings.model_hub_url, dest or settings.production_models_dir, token=token)
    for name, paths in model_download.download_models(downloader, specs).items():
        click.echo(f"{name}: {paths[0]}")
    return 0


@cli.command()
@click.argument("what", type=click.Choice(["redis", *launch.SERVED]))
@click.option(
    "--copy", "copy", type=click.IntRange(min=1), default=None,
    help="Which copy of the bulk server, from 1 (ATHENA_EMBEDDINGS_BULK_SERVERS); "
    "unset, the copy number honcho gives (`up` runs one per copy), else 1.",
)
def serve(what: str, copy: Optional[int]) -> int:
    """Run one server of the stack in the foreground (used by the Procfile)."""
    if what == "redis":
        launch.serve_redis(get_settings())
    else:
        launch.serve_llama(what, get_settings(), launch.copy_number(copy) - 1)
    return 1


@cli.command()
@click.argument("queue", type=QUEUES)
@click.option("--node-suffix", default="%h", show_default=True, help="Worker node name after '<queue>@'.")
def worker(queue: str, node_suffix: str) -> int:
    """Run the Celery worker of one queue, concurrency = its server's slots."""
    launch.run_worker(Queue(queue), get_settings(), node_suffix)
    return 1


@cli.command()
@click.option("--queue", "queues", multiple=True, type=QUEUES, help="Check only this queue (repeatable).")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for each answer.")
@click.option("--json", "as_json", is_flag=True)
def health(queues: tuple[str, ...], timeout: float, as_json: bool) -> int:
    """Per queue: broker, workers, server /health and model, compressor; exit 1 if anything is unhealthy."""
    from athena_client.client import AthenaClient
    from athena_inference.workers.ops.reports import health_lines

    settings = get_settings()
    with AthenaClient(settings.broker_url, settings.result_backend) as client:
        report = client.health(timeout=timeout)
    wanted = list(queues) or [q.value for q in Queue]
    healthy = report.healthy(wanted)
    if as_json:
        click.echo(json.dumps({"healthy": healthy, **report.model_dump(mode="json")}, indent=2))
    else:
        click.echo("\n".join(health_lines(report, wanted, broker=settings.broker_url.rsplit("@", 1)[-1])))
    return 0 if healthy else 1


@cli.command()
def flower() -> int:
    """Run Flower with basic auth from ATHENA_FLOWER_BASIC_AUTH."""
    try:
        launch.run_flower(get_settings())
    except launch.FlowerRefused as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 1


@cli.command()
def exporter() -> int:
    """Serve per-kind histograms, tokens/s, totals and queue depths for Prometheus."""
    from athena_inference.workers.ops.exporter import serve_exporter

    serve_exporter(get_settings())
    return 1


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--reset", is_flag=True, help="Forget every recorded call.")
def metrics(as_json: bool, reset: bool) -> int:
    """Per-kind counts, failures, latency percentiles and tokens/s from Redis."""
    from athena_inference.workers.metrics import MetricsStore
    from athena_inference.workers.ops.reports import format_stats

    settings = get_settings()
    store = MetricsStore.from_url(settings.metrics_redis_url, window=settings.metrics_window)
    if reset:
        store.reset()
        click.echo("metrics reset")
        return 0
    stats = store.get_all_stats()
    if as_json:
        click.echo(json.dumps({kind: s.model_dump() for kind, s in stats.items()}, indent=2))
    else:
        click.echo(format_stats(stats) if stats else "no calls recorded yet")
    return 0


cli.add_command(reembed)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command; its return value is the exit code, and an AthenaError is one clear line, not a traceback."""
    try:
        code = cli.main(args=argv, prog_name="athena-inference", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        return 130
    except AthenaError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
