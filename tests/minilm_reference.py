"""The embedded default embedding model (all-MiniLM-L6-v2) run in this process by
transformers, as sentence-transformers runs it: the reference the servers' vectors are held to."""

from __future__ import annotations

import numpy as np


def reference_vectors(provisioned, texts: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised vectors of `texts`, one row each."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = provisioned.embeddings_model.parent / "all-MiniLM-L6-v2"
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


# The embedded model is a Q8_0 file: llama.cpp quantises the activations too, in blocks of a
# ubatch, and picks its kernels (AMX tiles or AVX-512) by how many tokens a pass holds. So one
# text's vector moves in the fourth decimal with the texts it shares a request with (the lowest
# cosine seen between two such vectors: 0.99988), where a wrong text, prefix or model gives 0.99
# or far less.
SAME_TEXT_COSINE = 0.9995


def assert_same_vectors(got, expected) -> None:
    """Each row of `got` is the vector of the same text as the row of `expected`, however each was batched."""
    a, b = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= SAME_TEXT_COSINE, f"row {worst}: cosine {cosines[worst]:.5f} to the vector of its text"
