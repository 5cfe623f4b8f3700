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
