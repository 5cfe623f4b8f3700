"""`athena-inference reembed ...`: start, resume, watch, inspect and cancel re-embedding jobs."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError
from tqdm import tqdm

from athena_client.errors import InvalidInput
from athena_client.client import AthenaClient
from athena_client.job_store import JobStore, state_json
from athena_client.jobs import JobState, JsonlSource, PostgresSource, ReembedJobRef, ReembedRequest
from athena_client.routes import TaskName
from athena_inference.config.settings import get_settings
from athena_inference.workers.reembed import build_runner, iter_progress


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


def _request(args: argparse.Namespace) -> ReembedRequest:
    try:
        return _build_request(args)
    except ValidationError as exc:
        raise InvalidInput("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None


def _build_request(args: argparse.Namespace) -> ReembedRequest:
    if args.jsonl:
        if not args.output:
            raise InvalidInput("--jsonl needs --output (a .jsonl or .npy path)")
        source: JsonlSource | PostgresSource = JsonlSource(
            path=args.jsonl, output=args.output, id_field=args.id_field, text_field=args.text_field
        )
    else:
        source = PostgresSource(dsn=args.postgres, table=args.table, target_column=args.target_column)
    return ReembedRequest(
        source=source,
        expected_model=args.expected_model,
        batch_tokens=args.batch_tokens,
        batch_texts=args.batch_texts,
        window=args.window,
    )


def _summary(state: JobState, jobs: JobStore) -> int:
    counts = state.counts
    print(
        f"job {state.job_id}: {state.status.value}; {counts.completed} embedded, {counts.skipped} skipped, "
        f"{counts.failed} failed of {counts.total} (model {state.model})"
    )
    for error in jobs.errors(state.job_id, 0, 9):
        print(f"  {error.id}: {error.error}: {error.message}")
    if counts.failed > 10:
        print(f"  ... `athena-inference reembed status {state.job_id} --errors` lists all {counts.failed}")
    if state.error:
        print(f"error: {state.error}", file=sys.stderr)
    if state.status.value in ("failed", "cancelled"):
        print(f"resume with: athena-inference reembed resume {state.job_id}", file=sys.stderr)
    return 0 if state.status.value == "completed" else 1


def _run_here(job_id: str, wait_for_lease_s: float) -> int:
    settings = get_settings()
    bar = ProgressBar(job_id)
    runner = build_runner(job_id, settings, on_progress=lambda progress: bar.show(progress.state))
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
        print(f"\nstopped watching; the job goes on (athena-inference reembed status {job_id})", file=sys.stderr)
        return 130
    finally:
        bar.close()
    return _summary(state, jobs)


def cmd_reembed(args: argparse.Namespace) -> int:
    settings = get_settings()
    jobs = JobStore.from_url(settings.result_backend)
    if args.action == "start":
        state = jobs.create(_request(args))
        print(f"job {state.job_id} created", file=sys.stderr)
        if args.queue:
            with AthenaClient(settings.broker_url, settings.result_backend) as client:
                client.submit(TaskName.REEMBED, ReembedJobRef(job_id=state.job_id))
            return 0 if args.no_watch else _watch(jobs, state.job_id)
        return _run_here(state.job_id, 0.0)
    if args.action == "resume":
        if args.queue:
            with AthenaClient(settings.broker_url, settings.result_backend) as client:
                client.resume_job(args.job_id)
            return _watch(jobs, args.job_id)
        jobs.clear_cancel(args.job_id)
        return _run_here(args.job_id, settings.job_lease_s if args.wait else 0.0)
    if args.action == "watch":
        return _watch(jobs, args.job_id)
    if args.action == "cancel":
        state = jobs.request_cancel(args.job_id)
        print(f"job {state.job_id}: cancel requested ({state.status.value}); batches in flight are written first")
        return 0
    if args.action == "list":
        for job_id in jobs.job_ids():
            state = jobs.get(job_id)
            print(f"{job_id}  {state.status.value:10}  {state.counts.done}/{state.counts.total}  {state.created_at:%Y-%m-%d %H:%M}")
        return 0
    state = jobs.get(args.job_id)
    print(state_json(state))
    if args.errors:
        for error in jobs.errors(args.job_id):
            print(error.model_dump_json())
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reembed", help="re-embed a JSONL file or a PostgreSQL table; resumable jobs (docs/reembedding.md)")
    actions = p.add_subparsers(dest="action", required=True)

    start = actions.add_parser("start", help="create a job and run it here with a progress bar (or --queue it)")
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--jsonl", metavar="PATH", help="JSONL source, one memory per line")
    where.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string, e.g. postgresql://user@host/db")
    start.add_argument("--output", help="JSONL source only: output .jsonl or .npy")
    start.add_argument("--id-field", default="id")
    start.add_argument("--text-field", default="content")
    start.add_argument("--table", default="memory_vectors")
    start.add_argument("--target-column", help="PostgreSQL only: write into this new column instead of in place")
    start.add_argument("--expected-model", help="refuse to write if the bulk lane serves another model")
    defaults = ReembedRequest.model_fields
    start.add_argument("--batch-tokens", type=int, default=defaults["batch_tokens"].default)
    start.add_argument("--batch-texts", type=int, default=defaults["batch_texts"].default)
    start.add_argument("--window", type=int, default=defaults["window"].default, help="batches in flight")
    start.add_argument("--queue", action="store_true", help="run it on the jobs worker instead of in this process")
    start.add_argument("--no-watch", action="store_true", help="with --queue: print the job id and return")

    resume = actions.add_parser("resume", help="go on with an interrupted, failed or cancelled job")
    resume.add_argument("job_id")
    resume.add_argument("--wait", action="store_true", help="wait for a dead runner's lease to run out")
    resume.add_argument("--queue", action="store_true", help="resume it on the jobs worker")

    for name, text in (("watch", "a progress bar for a job running elsewhere"), ("cancel", "stop a job after its batches in flight")):
        actions.add_parser(name, help=text).add_argument("job_id")
    status = actions.add_parser("status", help="a job's state as JSON")
    status.add_argument("job_id")
    status.add_argument("--errors", action="store_true", help="also print every item error, one JSON line each")
    actions.add_parser("list", help="the latest jobs")
    p.set_defaults(run=cmd_reembed)

