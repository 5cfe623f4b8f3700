"""The stack's health and its metrics as text for a terminal."""

from __future__ import annotations

from typing import Any, Sequence

from athena_client.contract.health import HealthReport
from athena_client.contract.routes import Queue
from athena_inference.workers.metrics import KindStats


def health_lines(report: HealthReport, wanted: Sequence[str], broker: str) -> list[str]:
    """One line for the broker, one per queue asked about (and the compressor), and the verdict last."""
    lines = [f"broker {broker}: {'ok' if report.broker_ok else report.broker_detail}"]
    for name in wanted:
        queue = report.queues[name]
        server = {None: "-", True: "ready", False: "NOT READY"}[queue.server_ready]
        workers = ", ".join(queue.workers) or "NO WORKERS"
        extra = ""
        if queue.server_ready is False and queue.detail:
            extra = f" ({queue.detail})"
        elif queue.model:
            extra = f" ({queue.model}{f', profile {queue.profile}' if queue.profile else ''})"
        lines.append(f"{name:16} {'ok ' if queue.healthy else 'BAD'}  workers: {workers}; server: {server}{extra}")
    if Queue.COMPRESSION.value in wanted:
        c = report.compression
        lines.append(f"{'compressor':16} {'ok ' if c.ready else 'BAD'}  {c.method or ''} {c.reason or ''}".rstrip())
    lines.append("healthy" if report.healthy(wanted) else "UNHEALTHY")
    return lines


def _cell(value: Any) -> str:
    return "-" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))


def format_stats(stats: dict[str, KindStats]) -> str:
    header = ("kind", "count", "ok", "fail", "min", "avg", "p50", "p95", "max", "tok/s", "calls/s")
    rows = [header]
    for kind, s in stats.items():
        lat = s.latency_ms
        row = (kind, s.count, s.success, s.failures, lat.min, lat.avg, lat.p50, lat.p95, lat.max,
               s.tokens_per_second, s.rate_per_s)
        rows.append(tuple(_cell(v) for v in row))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)])
        for row in rows
    ]
    window = next(iter(stats.values())).window
    totals = [f"{kind}: " + ", ".join(f"{k} {v:g}" for k, v in s.totals.items()) for kind, s in stats.items() if s.totals]
    return "\n".join(lines + totals) + f"\n(latencies in ms over the last {window} successful calls per kind)"
