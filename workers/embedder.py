"""The one way any task embeds: a lane's model, its conventions, and every text rule.

Every path that turns text into vectors (the interactive `embed` and
`embed_batch`, the bulk lane's batches, consolidation's pattern embeddings)
asks an `Embedder`, and none talks to an embedding server itself. It owns:

- whether a text can be embedded at all (`text_problem`, the one definition);
- texts longer than the server takes (`long_texts.py`: refuse, truncate, chunk);
- the model's prefix for the purpose (document or query), before every input
  the server gets, each window of a cut text included;
- the size check: the server must return the profile's dimension, or the
  lane serves another model than its settings say (`DimensionMismatch`);
- Matryoshka cuts to a shorter size the profile allows, made unit length again;
- what made the vectors (model, profile, purpose, prefix, size), for the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from athena_client.contract.errors import AthenaError, DimensionMismatch, InputTooLong, InvalidInput
from athena_client.contract.health import ServerHealth
from athena_client.contract.jobs import ItemError
from athena_client.contract.payloads import (
    EmbedPurpose,
    LongTextPolicy,
    ServerTiming,
    VectorNote,
    VectorOrigin,
    text_problem,
)
from athena_inference.config.embedding_profiles import EmbeddingProfile
from athena_inference.workers.llama_server import Embeddings, LlamaServer
from athena_inference.workers.long_texts import Embed, Vectors, embed_texts
from athena_inference.workers.server_pool import ServerPool

# The message of an item refused by the server's input limit, by the policy that refused it.
# (InputTooLong's own message numbers texts within one attempt, not the batch.)
TOO_LONG = (
    "the text has more tokens than the embedding server takes in one input "
    "(ATHENA_EMBEDDING_MAX_TOKENS for the embedded server); split it before embedding"
)
CANNOT_CUT = (
    "the text has more tokens than the embedding server takes in one input, "
    "and it could not be cut into windows that the server takes"
)
HEALTH_PROBE = "health probe"


@dataclass(frozen=True)
class Embedded:
    """A call's vectors in input order, how each was made (None: from the whole text), and what made them."""

    vectors: list[list[float]]
    notes: list[Optional[VectorNote]]
    origin: VectorOrigin
    timing: ServerTiming

    @property
    def cut_notes(self) -> list[Optional[VectorNote]]:
        """The results' `notes`: empty when every vector came from a whole text."""
        return self.notes if any(self.notes) else []


@dataclass(frozen=True)
class EmbeddedItems:
    """A batch where each text stands alone: `vectors[i]` is None exactly when `errors[i]` says why."""

    vectors: list[Optional[list[float]]]
    errors: list[Optional[ItemError]]
    notes: list[Optional[VectorNote]]
    origin: VectorOrigin
    # None when no text reached the server.
    timing: Optional[ServerTiming]


class Embedder:
    """One embedding lane: its servers (one, or the bulk lane's copies), its
    model's profile, and the size its vectors have unless a call asks for a
    shorter one. `via` replaces a server's own `embed` for the calls' requests
    (the interactive lane's coalescer, which merges concurrent embeds)."""

    def __init__(
        self,
        pool: ServerPool,
        profile: EmbeddingProfile,
        dimension: int,
        *,
        via: Optional[Callable[[LlamaServer], Embed]] = None,
    ) -> None:
        if problem := profile.dimension_problem(dimension):
            raise DimensionMismatch(problem)
        self.pool, self.profile, self.dimension, self._via = pool, profile, dimension, via

    def embed(
        self,
        texts: list[str],
        *,
        purpose: EmbedPurpose = "document",
        long_text: LongTextPolicy = "fail",
        dimensions: Optional[int] = None,
    ) -> Embedded:
        """Vectors for `texts`, all or none: a text that cannot be embedded fails the call (`InvalidInput`)."""
        problems = [(i, problem) for i, text in enumerate(texts) if (problem := text_problem(text))]
        if problems:
            raise InvalidInput("; ".join(f"text {i}: {problem}" for i, problem in problems))
        size = self._size(dimensions)
        prefix = self.profile.prefix(purpose)
        out = self.pool.call(lambda server: self._vectors(server, texts, long_text, prefix))
        return Embedded(
            vectors=[self._cut(v, size) for v in out.vectors],
            notes=out.notes,
            origin=VectorOrigin(model=out.model, profile=self.profile.name, purpose=purpose, prefix=prefix, dimension=size),
            timing=out.timing,
        )

    def embed_items(
        self,
        texts: list[str],
        *,
        purpose: EmbedPurpose = "document",
        long_text: LongTextPolicy = "fail",
        dimensions: Optional[int] = None,
    ) -> EmbeddedItems:
        """Vectors for `texts`, where a text that cannot be embedded (blank, too
        long for its policy) gets an error of its own and the rest are embedded."""
        size = self._size(dimensions)
        errors: list[Optional[ItemError]] = [
            ItemError(id=i, error="InvalidInput", message=problem) if (problem := text_problem(text)) else None
            for i, text in enumerate(texts)
        ]
        # Each refusal fails at least one more text, so this ends.
        while True:
            todo = [i for i, error in enumerate(errors) if error is None]
            if not todo:
                origin = VectorOrigin(model="", profile=self.profile.name, purpose=purpose, prefix=self.profile.prefix(purpose), dimension=size)
                return EmbeddedItems([None] * len(texts), errors, [], origin, None)
            try:
                out = self.embed([texts[i] for i in todo], purpose=purpose, long_text=long_text, dimensions=size)
                break
            except InputTooLong as exc:
                # The over-long texts are named; without names there is nothing to drop but everything.
                culprits = [todo[p] for p in exc.positions] or todo
                message = (TOO_LONG if long_text == "fail" else CANNOT_CUT) if exc.positions else str(exc)
                for i in culprits:
                    errors[i] = ItemError(id=i, error="InputTooLong", message=message)
        vectors: list[Optional[list[float]]] = [None] * len(texts)
        notes: list[Optional[VectorNote]] = [None] * len(texts)
        for i, vector, note in zip(todo, out.vectors, out.notes, strict=True):
            vectors[i], notes[i] = vector, note
        return EmbeddedItems(vectors, errors, notes if any(notes) else [], out.origin, out.timing)

    def health(self) -> ServerHealth:
        """Every server of the lane ready, and making vectors of the profile's size:
        a lane whose server runs another model than its profile says is not healthy,
        though every server answers."""
        seen = self.pool.health()
        if not seen.ready:
            return seen
        try:
            self.embed([HEALTH_PROBE])
        except DimensionMismatch as exc:
            return seen.model_copy(update={"ready": False, "detail": str(exc)})
        except AthenaError as exc:
            return seen.model_copy(update={"ready": False, "detail": f"cannot embed: {exc.__class__.__name__}: {exc}"})
        return seen.model_copy(update={"profile": self.profile.name})

    # --- the steps ---

    def _size(self, dimensions: Optional[int]) -> int:
        size = self.dimension if dimensions is None else dimensions
        if problem := self.profile.dimension_problem(size):
            raise InvalidInput(f"dimensions={size}: {problem}")
        return size

    def _vectors(self, server: LlamaServer, texts: list[str], long_text: LongTextPolicy, prefix: str) -> Vectors:
        """All of one call's requests go to one copy of the server (the bulk lane has several)."""
        send = self._via(server) if self._via else server.embed
        return embed_texts(server, texts, long_text, lambda inputs: self._checked(send(inputs)), prefix)

    def _checked(self, out: Embeddings) -> Embeddings:
        """The server's vectors are the profile's size, before anything is made of them."""
        sizes = {len(vector) for vector in out.vectors}
        if sizes != {self.profile.dimension}:
            raise DimensionMismatch(
                f"{out.model} returned {sorted(sizes)}-dimensional vectors but its profile {self.profile.name} makes "
                f"{self.profile.dimension}: the server runs another model than ATHENA_EMBEDDING_PROFILE "
                f"(or ATHENA_EMBEDDINGS_BULK_PROFILE) says"
            )
        return out

    def _cut(self, vector: list[float], size: int) -> list[float]:
        if size == self.profile.dimension:
            return vector
        return matryoshka(vector, size, layer_norm=self.profile.truncate_norm == "layer_norm")


def matryoshka(vector: list[float], size: int, *, layer_norm: bool = False) -> list[float]:
    """The first `size` dimensions of `vector`, made unit length again; with
    `layer_norm`, the full vector is layer-normalised first (nomic's recipe,
    which is unchanged by the server having scaled it to unit length)."""
    full = np.asarray(vector, dtype=np.float64)
    if layer_norm:
        full = (full - full.mean()) / np.sqrt(full.var() + 1e-5)
    head = full[:size]
    return (head / max(float(np.linalg.norm(head)), 1e-12)).tolist()
