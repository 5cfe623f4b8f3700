"""What each embedding model needs around its server: one typed profile per model.

An embedding server returns a vector for whatever text it is sent; what to
send, and what the vector may be cut to, is the model's convention and no
server knows it. nomic-embed-text-v1.5 was trained with `search_document: `
before what is stored and `search_query: ` before what is searched for; e5
with `passage: ` / `query: `; bge with an instruction before queries only.
Without them the vectors are of lower quality and nothing fails. A Matryoshka
model (nomic v1.5) may be cut to a shorter vector, but only to the sizes it was
trained for, and nomic's recipe layer-normalises the full vector before it is
cut.

The table below is the known models; `ATHENA_EMBEDDING_PROFILES` (JSON, name ->
fields) adds profiles or replaces these, and `ATHENA_EMBEDDING_PROFILE` /
`ATHENA_EMBEDDINGS_BULK_PROFILE` choose one per lane.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What a text is embedded for: stored (a document, the default for stores) or searched with (a query).
Purpose = Literal["document", "query"]
# How the full vector is made ready before it is cut to a Matryoshka size:
# "l2": sliced, then made unit length again; "layer_norm": layer-normalised
# over the full vector first (nomic's recipe), then sliced and made unit length.
TruncateNorm = Literal["l2", "layer_norm"]
# llama-server's --pooling for the model.
Pooling = Literal["mean", "cls", "last"]


class EmbeddingProfile(BaseModel):
    """One embedding model's conventions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100)
    document_prefix: str = Field("", max_length=200)
    query_prefix: str = Field("", max_length=200)
    pooling: Pooling = "mean"
    # The size of the vector the model makes.
    dimension: int = Field(ge=1, le=65536)
    # Shorter sizes the model was trained to be cut to (Matryoshka); empty when it was not.
    dimensions: tuple[int, ...] = ()
    truncate_norm: TruncateNorm = "l2"
    # The most tokens the model reads in one input.
    context: int = Field(512, ge=8, le=1_048_576)

    @model_validator(mode="after")
    def _cut_sizes_are_shorter(self) -> "EmbeddingProfile":
        wrong = [d for d in self.dimensions if not 1 <= d < self.dimension]
        if wrong:
            raise ValueError(f"Matryoshka sizes {wrong} are not between 1 and the model's {self.dimension} dimensions")
        return self

    def prefix(self, purpose: Purpose) -> str:
        return self.document_prefix if purpose == "document" else self.query_prefix

    @property
    def allowed_dimensions(self) -> tuple[int, ...]:
        """Every size a vector of this model may have, longest first."""
        return tuple(sorted({self.dimension, *self.dimensions}, reverse=True))

    def dimension_problem(self, dimension: int) -> Optional[str]:
        """Why this model's vectors cannot be `dimension` long, or None."""
        if dimension in self.allowed_dimensions:
            return None
        if not self.dimensions:
            return f"{self.name} makes {self.dimension}-dimensional vectors and cannot be cut (it is not a Matryoshka model)"
        sizes = ", ".join(str(d) for d in self.allowed_dimensions)
        return f"{self.name} vectors can be {sizes} dimensions long, not {dimension}"


_BGE_QUERY = "Represent this sentence for searching relevant passages: "

KNOWN_PROFILES: dict[str, EmbeddingProfile] = {
    p.name: p
    for p in (
        # The embedded default: symmetric, no prefixes.
        EmbeddingProfile(name="all-MiniLM-L6-v2", dimension=384, context=512),
        EmbeddingProfile(
            name="nomic-embed-text-v1.5",
            document_prefix="search_document: ",
            query_prefix="search_query: ",
            dimension=768,
            dimensions=(512, 256, 128, 64),
            truncate_norm="layer_norm",
            context=8192,
        ),
        EmbeddingProfile(
            name="nomic-embed-text-v1",
            document_prefix="search_document: ",
            query_prefix="search_query: ",
            dimension=768,
            context=8192,
        ),
        # bge v1.5: an instruction before queries only; the vector is the CLS token's.
        EmbeddingProfile(name="bge-small-en-v1.5", query_prefix=_BGE_QUERY, pooling="cls", dimension=384),
        EmbeddingProfile(name="bge-base-en-v1.5", query_prefix=_BGE_QUERY, pooling="cls", dimension=768),
        EmbeddingProfile(name="bge-large-en-v1.5", query_prefix=_BGE_QUERY, pooling="cls", dimension=1024),
        # e5: "passage: " and "query: ", mean pooling.
        EmbeddingProfile(name="e5-small-v2", document_prefix="passage: ", query_prefix="query: ", dimension=384),
        EmbeddingProfile(name="e5-base-v2", document_prefix="passage: ", query_prefix="query: ", dimension=768),
        EmbeddingProfile(name="e5-large-v2", document_prefix="passage: ", query_prefix="query: ", dimension=1024),
        EmbeddingProfile(name="multilingual-e5-small", document_prefix="passage: ", query_prefix="query: ", dimension=384),
        EmbeddingProfile(name="multilingual-e5-base", document_prefix="passage: ", query_prefix="query: ", dimension=768),
        EmbeddingProfile(name="multilingual-e5-large", document_prefix="passage: ", query_prefix="query: ", dimension=1024),
    )
}
DEFAULT_PROFILE = "all-MiniLM-L6-v2"


# What decides the vectors a profile makes: stored vectors are told apart by
# the profile's name (`vector_space`), so a name must always mean these.
VECTOR_FIELDS = ("document_prefix", "query_prefix", "pooling", "dimension", "truncate_norm")


def profile_table(overrides: dict[str, EmbeddingProfile]) -> dict[str, EmbeddingProfile]:
    """The known profiles with `overrides` added or put in their place, keyed by lower-case name.

    An override of a known profile may change what does not change its vectors
    (its context, its Matryoshka sizes); one that changes them needs a name of
    its own, or vectors made two ways would be recorded as one space."""
    known_by_name = {name.lower(): p for name, p in KNOWN_PROFILES.items()}
    table = dict(known_by_name)
    for name, profile in overrides.items():
        known = known_by_name.get(name.lower())
        changed = [f for f in VECTOR_FIELDS if known is not None and getattr(known, f) != getattr(profile, f)]
        if known is not None and changed:
            raise ValueError(
                f"{known.name} is a known profile, and this one changes its {', '.join(changed)}: its vectors would "
                f"differ under the same name; give it a name of its own"
            )
        table[name.lower()] = profile
    return table


def find_profile(name: str, table: dict[str, EmbeddingProfile]) -> Optional[EmbeddingProfile]:
    """The profile called `name`, whatever its case; None when there is none."""
    return table.get(name.lower())
