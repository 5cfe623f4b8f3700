"""A fake embedding server for unit tests of the text rules, behind httpx.MockTransport."""

from __future__ import annotations

import json

import httpx


class WordServer:
    """A fake embedding server that counts one token per word.

    It adds two special tokens to every input and refuses an input over `limit`
    tokens as llama-server does. Its vectors are raw counts, not unit length:
    [0] words starting with "a", [1] with "b", [2] any other, so a mean of
    windows shows whether each window was normalised first. Detokenizing joins
    words with spaces, except that "x_y" comes back as two words ("x y") and
    "boom" as twenty: texts that re-tokenize longer than their tokens.
    """

    def __init__(self, limit: int, dimension: int = 384, state_limit: bool = True) -> None:
        self.limit = limit
        self.dimension = dimension
        self.state_limit = state_limit
        self.vocabulary: dict[str, int] = {}
        self.requests: list[tuple[str, dict]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.requests.append((request.url.path, {}))
            return httpx.Response(200, json={"status": "ok"} if request.url.path == "/health" else {"data": [{"id": "fake"}]})
        body = json.loads(request.content)
        self.requests.append((request.url.path, body))
        if request.url.path == "/tokenize":
            ids = [self.vocabulary.setdefault(word, len(self.vocabulary) + 1000) for word in body["content"].split()]
            return httpx.Response(200, json={"tokens": [101, *ids, 102] if body["add_special"] else ids})
        if request.url.path == "/detokenize":
            words = {i: w for w, i in self.vocabulary.items()}
            spoken = [" ".join(["boom"] * 20) if words[t] == "boom" else words[t].replace("_", " ") for t in body["tokens"]]
            return httpx.Response(200, json={"content": " " + " ".join(spoken)})
        return self.embed(body["input"])

    def embed(self, texts: list[str]) -> httpx.Response:
        longest = max(len(text.split()) + 2 for text in texts)
        if longest > self.limit:
            stated = f" (current batch size: {self.limit})" if self.state_limit else ""
            message = f"input ({longest} tokens) is too large to process. increase the physical batch size{stated}"
            return httpx.Response(500, json={"error": {"message": message}})
        data = [{"index": i, "embedding": self.counts(text)} for i, text in enumerate(texts)]
        return httpx.Response(200, json={"model": "fake", "data": data, "usage": {"prompt_tokens": 1}})

    def counts(self, text: str) -> list[float]:
        words = text.split()
        a = sum(w.startswith("a") for w in words)
        b = sum(w.startswith("b") for w in words)
        return [float(a), float(b), float(len(words) - a - b)] + [0.0] * (self.dimension - 3)

    def embedded(self) -> list[list[str]]:
        """The inputs of every embedding request, refused ones included."""
        return [body["input"] for path, body in self.requests if path == "/v1/embeddings"]

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]
