"""Two worker+server pairs on the `embeddings` queue share its load."""

from __future__ import annotations

from athena_client.contract.payloads import EmbedBatchRequest
from athena_client.contract.routes import TaskName
from tests.harness import free_port


def test_a_second_pair_takes_its_share_of_the_embeddings_queue(sender, stack):
    url = f"http://127.0.0.1:{free_port()}"
    second = {"LLAMACPP_EMBEDDINGS_URL": url}
    server = stack.llama("embeddings", url, second)
    worker = stack.worker("embeddings", "pair2", second)
    stack.wait_for_workers(sender, {"embeddings@pair2"})

    before = served(sender)
    texts = [f"memory {i} about the garden and the weekly report" for i in range(64)]
    sent = [sender.send(TaskName.EMBED_BATCH, EmbedBatchRequest(texts=texts)) for _ in range(8)]
    for result in sent:
        assert len(sender.wait(TaskName.EMBED_BATCH, result, 300).embeddings) == 64
    after = served(sender)
    assert after["embeddings@main"] > before.get("embeddings@main", 0)
    assert after["embeddings@pair2"] > before.get("embeddings@pair2", 0)
    worker.stop()
    server.stop()


def served(sender) -> dict[str, int]:
    """embed_batch tasks each worker has run, as the workers themselves count them."""
    stats = sender.app.control.inspect(timeout=2.0).stats() or {}
    return {name: s.get("total", {}).get(TaskName.EMBED_BATCH.value, 0) for name, s in stats.items()}
