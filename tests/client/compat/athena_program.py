"""Athena's call patterns, run in a virtual environment that holds the client alone.

Each call is written the way Athena's own code makes it (core/llm_client
callers, the memory store's EmbeddingModel, the consolidation reasoner and its
monitor); only the import lines differ from Athena's. Prints one JSON line.
"""

import asyncio
import dataclasses
import json

from athena_client.compat.embeddings import EmbeddingModel, cosine_similarity
from athena_client.compat.llm_client import LocalLLMClient, get_llm_client
from athena_client.compat.model_metrics import get_monitor

EVENTS_TEXT = """Event 1:
  Time: 2026-11-02 09:14:00
  Type: error
  Content: The nightly reconciliation job failed silently for three days after the bank rotated its SFTP host key.
  Tags: payments, batch

Event 2:
  Time: 2026-11-02 11:40:00
  Type: decision
  Content: Every batch job must exit non-zero on any exception and page the on-call engineer.

Event 3:
  Time: 2026-11-05 09:45:00
  Type: decision
  Content: Every batch job reports its processed row count so a drop to zero shows on the dashboard.
"""
CONTEXT = " ".join(
    f"Memory {i}: the payments team reviewed the reconciliation job, its host keys, its alerts and its row counts." for i in range(12)
)


def read_patterns(text: str) -> list[dict]:
    """How Athena's consolidation reader takes an answer apart: the fenced json block, a list of dicts."""
    start = text.find("```json")
    end = text.find("```", start + 7)
    if start < 0 or end <= start:
        return []
    return [
        {"description": p.get("description", ""), "type": p.get("type", "pattern"), "confidence": float(p.get("confidence", 0.5)),
         "tags": p.get("tags", []), "evidence": p.get("evidence", "")}
        for p in json.loads(text[start + 7 : end])
    ]


def kinds(result) -> dict:
    return {field.name: type(getattr(result, field.name)).__name__ for field in dataclasses.fields(result)}


async def llm_calls() -> dict:
    out: dict = {}
    client = get_llm_client()
    out["health"] = await client.check_health()

    embedded = await client.embed("The deploy failed at 3am.")
    out["embed"] = {"kinds": kinds(embedded), "dimension": embedded.dimension, "length": len(embedded.embedding)}
    texts = [f"memory number {i} about the payments team" for i in range(40)]
    batch = await client.embed_batch(texts, batch_size=32)
    out["embed_batch"] = {"count": len(batch), "dimensions": sorted({r.dimension for r in batch}), "kinds": kinds(batch[0])}

    reasoned = await client.reason("In one sentence: why do batch jobs fail silently?", system="Be brief.", max_tokens=48, temperature=0.7, top_p=0.9)
    out["reason"] = {"kinds": kinds(reasoned), "tokens": reasoned.tokens, "text": bool(reasoned.text.strip())}

    compressed = await client.compress_prompt(context=CONTEXT, instruction="Summarise the memories.", compression_ratio=0.5)
    out["compress"] = {"kinds": kinds(compressed), "ratio": compressed.compression_ratio, "asdict": sorted(dataclasses.asdict(compressed))}

    off = LocalLLMClient(enable_compression=False)
    unchanged = await off.compress_prompt(context=CONTEXT, instruction="Summarise the memories.", compression_ratio=0.5)
    out["compress_off"] = {"same": unchanged.compressed_prompt == CONTEXT, "ratio": unchanged.compression_ratio}
    out["health_off"] = await off.check_health()

    consolidated = await client.consolidate_with_reasoning(events_text=EVENTS_TEXT, task_description="Extract semantic patterns from these episodic events")
    patterns = read_patterns(consolidated.text)
    out["consolidate"] = {"kinds": kinds(consolidated), "patterns": len(patterns), "types": sorted({p["type"] for p in patterns}),
                          "evidence_is_text": all(isinstance(p["evidence"], str) for p in patterns)}

    try:
        await client.embed("   ")
        out["blank_embed"] = "accepted"
    except RuntimeError as exc:  # Athena's own except clause
        out["blank_embed"] = type(exc).__name__
    return out


def memory_store_calls() -> dict:
    model = EmbeddingModel()
    vector = model.embed("a memory to store")
    vectors = model.embed_batch(["first memory", "second memory", "third memory"])
    return {
        "dim": model.embedding_dim,
        "embed": [type(vector).__name__, len(vector), type(vector[0]).__name__],
        "batch": [len(vectors), sorted({len(v) for v in vectors})],
        "version": model.get_version(),
        "empty_batch": model.embed_batch([]),
        "self_similarity": round(cosine_similarity(vectors[0], vectors[0]), 6),
    }


def monitor_calls() -> dict:
    monitor = get_monitor()
    monitor.record_reasoning(latency_ms=120.0, prompt_tokens=40, output_tokens=12, temperature=0.5, status="success")
    stats = monitor.get_all_stats()
    return {kind: sorted(stats[kind]) for kind in ("embedding", "reasoning", "compression")} | {
        "operations": {kind: stats[kind].get("total_operations", 0) for kind in ("embedding", "reasoning", "compression")},
    }


result = asyncio.run(llm_calls())
result["memory_store"] = memory_store_calls()
result["monitor"] = monitor_calls()
print(json.dumps(result))
