"""`athena-inference reembed start|resume` running a job in this shell."""

from __future__ import annotations

from types import SimpleNamespace

from athena_inference.workers.ops import reembed_cli


def test_a_runner_in_a_shell_gives_way_to_the_interactive_lanes_as_the_jobs_worker_does(monkeypatch):
    niced: list[int] = []
    monkeypatch.setattr(reembed_cli.os, "nice", niced.append)
    monkeypatch.setattr(reembed_cli, "build_runner", lambda job_id, settings, on_progress: SimpleNamespace(
        run=lambda wait_for_lease_s: "done", jobs=None))
    monkeypatch.setattr(reembed_cli, "_summary", lambda state, jobs: 0 if state == "done" else 1)
    assert reembed_cli._run_here("a-job", 0.0) == 0
    assert niced == [10]
