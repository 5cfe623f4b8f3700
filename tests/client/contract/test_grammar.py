"""Compact JSON grammars: the shapes they allow, and the length no answer can pass."""

import json
import re

import pytest

from athena_client.contract.grammar import UnsupportedSchema, compact_json_grammar, longest_output

SCHEMA = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"type": "string", "maxLength": 5}},
        "kind": {"enum": ["a", "bc"]},
        "count_of": {"type": "integer", "minimum": 0, "maximum": 12},
        "ok": {"type": "boolean"},
    },
    "required": ["items", "kind", "count_of", "ok"],
}


def test_the_grammar_writes_every_key_in_order_with_no_whitespace():
    grammar = compact_json_grammar(SCHEMA)
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.index('\\"items\\":') < root.index('\\"kind\\":') < root.index('\\"count_of\\":') < root.index('\\"ok\\":')
    literals = re.findall(r'"((?:[^"\\]|\\.)*)"', root)
    assert literals and not [text for text in literals if any(c.isspace() for c in text)]


def test_array_items_are_named_rules_with_gbnf_names():
    grammar = compact_json_grammar({"type": "object", "properties": {"a_b": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 3}}}, "required": ["a_b"]})
    assert "root-a-b-item ::=" in grammar and "_" not in grammar.split("char ::=")[0].split("::=")[0]


def test_strings_take_printable_ascii_without_quotes_or_backslashes():
    char = compact_json_grammar(SCHEMA).splitlines()[-1]
    assert char == r"char ::= [\x20-\x21\x23-\x5B\x5D-\x7E]"


def test_the_longest_output_is_the_fullest_answer_written_compactly():
    fullest = {"items": ["wwwww"] * 3, "kind": "bc", "count_of": 12, "ok": False}
    assert longest_output(SCHEMA) == len(json.dumps(fullest, separators=(",", ":")))


@pytest.mark.parametrize("schema, problem", [
    ({"type": "string"}, "maxLength"),
    ({"type": "array", "items": {"type": "string", "maxLength": 1}}, "maxItems"),
    ({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": []}, "required"),
    ({"type": "number"}, "unsupported"),
])
def test_a_schema_outside_the_subset_is_refused_by_name(schema, problem):
    with pytest.raises(UnsupportedSchema, match=problem):
        compact_json_grammar(schema)
