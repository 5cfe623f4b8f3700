"""The peer a user would pick instead of a llama-server: the same checkpoint in torch, in process."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

CPUS = os.cpu_count() or 1


class TorchPeer:
    """all-MiniLM-L6-v2 in torch, as sentence-transformers runs it: sorted by
    length, batches of 64, mean pooling over the attention mask, L2-normalised."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def texts_per_s(self, texts: list[str], threads: int, batch: int = 64) -> tuple[float, list[list[float]]]:
        import torch

        torch.set_num_threads(threads)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[Optional[list[float]]] = [None] * len(texts)
        self._embed([texts[i] for i in order[:batch]])  # warm-up
        started = time.perf_counter()
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            for i, vector in zip(chunk, self._embed([texts[i] for i in chunk])):
                vectors[i] = vector
        return len(texts) / (time.perf_counter() - started), vectors  # type: ignore[return-value]

    def _embed(self, texts: list[str]) -> list[list[float]]:
        import torch

        with torch.inference_mode():
            encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
            hidden = self.model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=1).tolist()


def cosines_to(a: list[list[float]], b: list[list[float]]):
    """The cosine between each vector of `a` and the vector of `b` in the same place."""
    import numpy as np

    x, y = np.asarray(a), np.asarray(b)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return (x * y).sum(1)
