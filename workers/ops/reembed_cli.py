"""`athena-inference reembed ...`: start, resume, watch, inspect and cancel re-embedding jobs."""

from __future__ import annotations

import os
import re
import sys
from typing import Optional

import click
from tqdm import tqdm

from athena_client.client import AthenaClient
from athena_client.contract.errors import InvalidInput
from athena_client.contract.jobs import JobState, JobStatus, ReembedRequest
from athena_client.contract.routes import Queue
from athena_client.contract.validation import parse
from athena_client.shared_redis.job_store import JobStore, state_json
from athena_inference.config.registry import lane
from athena_inference.config.settings import get_settings
from athena_inference.workers.reembedding.runner import build_runner, iter_progress

DEFAULTS = ReembedRequest.model_fields


class ProgressBar:
    """A tqdm bar over a job's rows: rate, ETA, and the counts in its postfix."""

    def __init__(self, job_id: str) -> None:
        self.bar = tqdm(desc=f"job {job_id}", unit="row", dynamic_ncols=True, file=sys.stderr)

    def show(self, state: JobState) -> None:
        counts = state.counts
        if counts.total and self.bar.total != counts.total:
            self.bar.total = counts.total
            self.bar.refresh()
        self.bar.n = counts.done
        # Strings, or tqdm shows 10000 as 1e+4.
        self.bar.set_postfix(
            status=state.status.value,
            embedded=str(counts.completed),
            skipped=str(counts.skipped),
            failed=str(counts.failed),
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _summary(state: JobState, jobs: JobStore) -> int:
    counts = state.counts
    made = [f"{n} {what}" for n, what in ((counts.chunked, "chunked"), (counts.truncated, "truncated")) if n]
    # The space names the model too: "all-MiniLM-L6-v2 [all-MiniLM-L6-v2, 384-d]".
    made_by = f" (vectors of {state.space})" if state.space else (f" (model {state.model})" if state.model else "")
    click.echo(
        f"job {state.job_id}: {state.status.value}; {counts.completed} embedded{' (' + ', '.join(made) + ')' if made else ''}, "
        f"{counts.skipped} skipped, {counts.failed} failed of {counts.total}{made_by}"
    )
    for error in jobs.errors(state.job_id, 0, 9):
        click.echo(f"  {error.id}: {error.error}: {error.message}")
    if counts.failed > 10:
        click.echo(f"  ... `athena-inference reembed status {state.job_id} --errors` lists all {counts.failed}")
    if state.error:
        click.echo(f"error: {state.error}", err=True)
    if state.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        click.echo(f"resume with: athena-inference reembed resume {state.job_id}", err=True)
    return 0 if state.status is JobStatus.COMPLETED else 1


def _run_here(job_id: str, wait_for_lease_s: float) -> int:
    # A runner here is the jobs worker's work done in this shell: it gives way to the interactive lanes as that worker does.
    os.nice(lane(Queue.JOBS).worker_nice)
    bar = ProgressBar(job_id)
    runner = build_runner(job_id, get_settings(), on_progress=lambda progress: bar.show(progress.state))
    try:
        state = runner.run(wait_for_lease_s=wait_for_lease_s)
    finally:
        bar.close()
    return _summary(state, runner.jobs)


def _watch(jobs: JobStore, job_id: str) -> int:
    bar = ProgressBar(job_id)
    try:
        for state in iter_progress(jobs, job_id):
            bar.show(state)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; the job goes on (athena-inference reembed status {job_id})", err=True)
        return 130
    finally:
        bar.close()
    return _summary(state, jobs)


def _jobs() -> JobStore:
    settings = get_settings()
    return JobStore.from_url(settings.result_backend, ttl_s=settings.job_ttl_s)


def _client() -> AthenaClient:
    settings = get_settings()
    return AthenaClient(settings.broker_url, settings.result_backend)


@click.group()
def reembed() -> None:
    """Re-embed a JSONL file or a PostgreSQL table; resumable jobs (docs/reembedding.md)."""


def _where(pairs: tuple[str, ...]) -> dict[str, object]:
    """`column=value` filters; a value of digits is an integer, true/false a boolean, anything else text."""
    filters: dict[str, object] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise click.BadParameter(f"{pair!r} is not column=value", param_hint="--where")
        filters[column.strip()] = int(value) if re.fullmatch(r"-?\d+", value) else {"true": True, "false": False}.get(value, value)
    return filters


@reembed.command()
@click.option("--jsonl", metavar="PATH", help="JSONL source, one memory per line.")
@click.option("--postgres", metavar="DSN", help="PostgreSQL connection string without a password, e.g. postgresql://user@host/db.")
@click.option("--connection", metavar="NAME", help="PostgreSQL connection named by ATHENA_POSTGRES_<NAME> where the job runs.")
@click.option("--output", help="JSONL source only: output .jsonl or .npy.")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="content", show_default=True)
@click.option("--table", default="memory_vectors", show_default=True)
@click.option("--side-table", help="PostgreSQL: the side table for the new vectors (default <table>__<model>).")
@click.option("--target-column", help="PostgreSQL: write into this new column of the table instead of a side table.")
@click.option("--in-place", is_flag=True, help="PostgreSQL: write into the column search reads (same dimension only).")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE", help="PostgreSQL: only rows where the column equals the value (repeatable).")
@click.option("--long-text", type=click.Choice(["chunk", "truncate", "fail"]), default=DEFAULTS["long_text"].default, show_default=True,
              help="Texts over the model's input limit: mean of their windows, first window only, or an item error.")
@click.option("--expected-model", help="Refuse to write if the bulk lane serves another model (a model name, or a whole vector space).")
@click.option("--dimensions", type=int, help="A Matryoshka size for the vectors, one the bulk lane's model allows (default: its own size).")
@click.option("--batch-tokens", type=int, default=DEFAULTS["batch_tokens"].default, show_default=True)
@click.option("--batch-texts", type=int, default=DEFAULTS["batch_texts"].default, show_default=True)
@click.option("--window", type=int, default=DEFAULTS["window"].default, show_default=True, help="Batches in flight.")
@click.option("--queue", "queued", is_flag=True, help="Run it on the jobs worker instead of in this process.")
@click.option("--no-watch", is_flag=True, help="With --queue: print the job id and return.")
def start(
    jsonl: Optional[str],
    postgres: Optional[str],
    connection: Optional[str],
    output: Optional[str],
    id_field: str,
    text_field: str,
    table: str,
    side_table: Optional[str],
    target_column: Optional[str],
    in_place: bool,
    where: tuple[str, ...],
    long_text: str,
    expected_model: Optional[str],
    dimensions: Optional[int],
    batch_tokens: int,
    batch_texts: int,
    window: int,
    queued: bool,
    no_watch: bool,
) -> int:
    """Create a job and run it here with a progress bar (or --queue it)."""
    if sum(map(bool, (jsonl, postgres, connection))) != 1:
        raise click.UsageError("give exactly one of --jsonl PATH, --postgres DSN or --connection NAME")
    if jsonl:
        if not output:
            raise InvalidInput("--jsonl needs --output (a .jsonl or .npy path)")
        source = {"kind": "jsonl", "path": jsonl, "output": output, "id_field": id_field, "text_field": text_field}
    else:
        source = {
            "kind": "postgres", "dsn": postgres, "connection": connection, "table": table, "side_table": side_table,
            "target_column": target_column, "in_place": in_place, "where": _where(where),
        }
    options = dict(
        expected_model=expected_model, dimensions=dimensions, batch_tokens=batch_tokens, batch_texts=batch_texts, window=window,
        long_text=long_text,
    )
    request = parse(ReembedRequest, {"source": source, **options})
    jobs = _jobs()
    if queued:
        with _client() as client:
            job_id = client.reembed(request.source, **options)
        click.echo(f"job {job_id} created", err=True)
        return 0 if no_watch else _watch(jobs, job_id)
    state = jobs.create(request)
    click.echo(f"job {state.job_id} created", err=True)
    return _run_here(state.job_id, 0.0)


@reembed.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait for a dead runner's lease to run out.")
@click.option("--queue", "queued", is_flag=True, help="Resume it on the jobs worker.")
def resume(job_id: str, wait: bool, queued: bool) -> int:
    """Go on with an interrupted, failed or cancelled job."""
    if queued:
        with _client() as client:
            client.resume_job(job_id)
        return _watch(_jobs(), job_id)
    _jobs().clear_cancel(job_id)
    return _run_here(job_id, get_settings().job_lease_s if wait else 0.0)


@reembed.command()
@click.argument("job_id")
def watch(job_id: str) -> int:
    """A progress bar for a job running elsewhere."""
    return _watch(_jobs(), job_id)


@reembed.command()
@click.argument("job_id")
def cancel(job_id: str) -> int:
    """Stop a job after its batches in flight."""
    state = _jobs().request_cancel(job_id)
    click.echo(f"job {state.job_id}: cancel requested ({state.status.value}); batches in flight are written first")
    return 0


@reembed.command()
@click.argument("job_id")
@click.option("--errors", is_flag=True, help="Also print every item error, one JSON line each.")
def status(job_id: str, errors: bool) -> int:
    """A job's state as JSON."""
    jobs = _jobs()
    click.echo(state_json(jobs.get(job_id)))
    if errors:
        for error in jobs.errors(job_id):
            click.echo(error.model_dump_json())
    return 0


@reembed.command(name="switch")
@click.argument("job_id")
@click.option("--undo", is_flag=True, help="Put the old vectors back (one transaction).")
@click.option("--yes", is_flag=True, help="Switch without asking, after printing the counts.")
@click.option("--allow-null", is_flag=True, help="Switch even if rows would be left with no vector (NULL, invisible to search).")
def switch_job(job_id: str, undo: bool, yes: bool, allow_null: bool) -> int:
    """Swap a completed PostgreSQL job's new vectors in for the old ones, in one transaction (docs/reembedding.md)."""
    from athena_inference.workers.reembedding.switch import Switch, connect

    state = _jobs().get(job_id)
    with connect(state) as conn:
        switch = Switch(state, conn)
        if undo:
            report = switch.undo()
            click.echo(f"undone: {report.table}.{report.column} holds the old vectors again; the new ones are parked")
            return 0
        report = switch.plan()
        click.echo("\n".join(report.lines()))
        if not yes and not click.confirm("switch now?", default=False):
            click.echo("nothing changed")
            return 1
        report = switch.switch(allow_null=allow_null)
    click.echo(f"switched: {report.table}.{report.column} now holds vectors of {state.space or state.model}; the old ones are in {report.old_column} "
               f"(undo: athena-inference reembed switch {job_id} --undo; drop them: ALTER TABLE {report.table} DROP COLUMN {report.old_column})")
    return 0


@reembed.command(name="list")
def list_jobs() -> int:
    """The latest jobs."""
    # A finished job's record expires (ATHENA_JOB_TTL_S); only those still on record are listed.
    for state in _jobs().recent():
        click.echo(
            f"{state.job_id}  {state.status.value:10}  {state.counts.done}/{state.counts.total}  {state.created_at:%Y-%m-%d %H:%M}"
            f"  {state.space or state.model or ''}".rstrip()
        )
    return 0
