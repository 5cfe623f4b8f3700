"""Texts far longer than the embedding server takes, through real workers and real llama-servers.

The embedded server takes 512 tokens per input (ATHENA_EMBEDDING_MAX_TOKENS);
the text here is about 66,000 characters of English prose, some thirty times that.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from athena_client.contract.errors import InputTooLong
from athena_client.contract.jobs import EmbedBulkRequest
from athena_client.contract.payloads import EmbedRequest
from athena_client.contract.routes import TaskName

LONG_CHARS = 66_000
# Thirty-odd windows on one thread take seconds; leave room for a slow machine.
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def long_prose() -> str:
    """Python's own documentation, as prose that stays the same from run to run of one interpreter."""
    import argparse
    import collections
    import json
    import logging
    import pathlib
    import subprocess
    import threading
    import unittest

    modules = (argparse, collections, json, logging, pathlib, subprocess, threading, unittest)
    docs = [inspect.getdoc(m) for m in modules]
    docs += [inspect.getdoc(getattr(m, name)) for m in modules for name in sorted(dir(m)) if not name.startswith("_")]
    text = "\n\n".join(dict.fromkeys(doc for doc in docs if doc))
    assert len(text) > LONG_CHARS
    return text[:LONG_CHARS].rsplit(" ", 1)[0]


@pytest.fixture(scope="module")
def chunked(sender, long_prose):
    return sender.call(TaskName.EMBED, EmbedRequest(text=long_prose, long_text="chunk"), timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def truncated(sender, long_prose):
    return sender.call(TaskName.EMBED, EmbedRequest(text=long_prose, long_text="truncate"), timeout=TIMEOUT_S)


def test_a_66000_character_text_chunked_is_one_384_d_unit_vector_noted_chunked(chunked):
    out = chunked
    assert out.note == "chunked"
    assert out.dimension == 384 and len(out.embedding) == 384
    assert np.linalg.norm(out.embedding) == pytest.approx(1.0, abs=1e-6)


def test_a_66000_character_text_is_refused_with_input_too_long_under_fail(sender, long_prose):
    pending = sender.send(TaskName.EMBED, EmbedRequest(text=long_prose, long_text="fail"))
    with pytest.raises(InputTooLong, match=r"positions \[0\]"):
        pending.get(timeout=TIMEOUT_S)


def test_a_66000_character_text_truncated_is_noted_truncated(truncated):
    out = truncated
    assert out.note == "truncated"
    assert out.dimension == 384 and np.linalg.norm(out.embedding) == pytest.approx(1.0, abs=1e-6)


def test_the_chunked_vector_differs_from_the_truncated_one(chunked, truncated):
    # The windows after the first count: chunking is not truncation under another name.
    assert float(np.dot(chunked.embedding, truncated.embedding)) < 0.99


def test_embed_bulk_chunks_a_long_text_among_short_ones_without_item_errors(sender, long_prose):
    # A few windows are enough here: the bulk lane chunks with the same code as the tests above.
    texts = ["The backup ran at night.", long_prose[:8_000], "She prefers tea in the morning."]
    out = sender.call(TaskName.EMBED_BULK, EmbedBulkRequest(texts=texts, long_text="chunk"), timeout=TIMEOUT_S)
    assert out.errors == [None, None, None]
    assert out.notes == [None, "chunked", None]
    assert all(vector is not None and len(vector) == 384 for vector in out.embeddings)
