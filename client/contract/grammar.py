"""Compact JSON grammars for llama.cpp (GBNF), whose longest output is known in advance.

llama.cpp's own JSON-schema grammar lets the model add whitespace between
tokens and write any Unicode in strings, so a small model that starts repeating
itself ("3_3_3_...", one token a character) can run past `max_tokens` and cut
the JSON off. The grammar made here allows no whitespace, printable ASCII only
in strings, and bounded lengths everywhere. Every token is then at least one
character, so an answer never has more tokens than `longest_output(schema)`
characters: with `max_tokens` at least that, the JSON is whole every time.

It covers the schema subset our answers use: objects whose properties are all
required (written in order), arrays with `maxItems`, strings with `maxLength`,
integers with `minimum` and `maximum`, `enum`s, and booleans.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Printable ASCII except '"' and '\\', so a character is one byte and needs no escape.
_CHAR = r"[\x20-\x21\x23-\x5B\x5D-\x7E]"


class UnsupportedSchema(ValueError):
    """The schema uses a feature outside the subset this grammar covers."""


def _literal(text: str) -> str:
    return json.dumps(text)


def _require(schema: dict, key: str, where: str) -> Any:
    if key not in schema:
        raise UnsupportedSchema(f"{where}: {schema.get('type', 'value')} needs {key!r}")
    return schema[key]


def _rule(schema: dict, where: str, rules: dict[str, str]) -> str:
    """A GBNF expression for `schema`; an array's item becomes a named rule in `rules`."""
    if "enum" in schema:
        return "(" + " | ".join(_literal(json.dumps(value, separators=(",", ":"))) for value in schema["enum"]) + ")"
    kind = schema.get("type")
    if kind == "string":
        low, high = schema.get("minLength", 0), _require(schema, "maxLength", where)
        return f'"\\"" char{{{low},{high}}} "\\""'
    if kind == "integer":
        low, high = _require(schema, "minimum", where), _require(schema, "maximum", where)
        if high - low > 1000:
            raise UnsupportedSchema(f"{where}: integer range wider than 1000")
        return "(" + " | ".join(_literal(str(n)) for n in range(int(low), int(high) + 1)) + ")"
    if kind == "boolean":
        return '("true" | "false")'
    if kind == "array":
        low, high = schema.get("minItems", 0), _require(schema, "maxItems", where)
        if high == 0:
            return '"[]"'
        item = re.sub(r"[^a-zA-Z0-9-]", "-", f"{where}-item")
        rules[item] = _rule(_require(schema, "items", where), item, rules)
        more = f'("," {item}){{{max(low - 1, 0)},{high - 1}}}'
        return f'"[" {item} {more} "]"' if low >= 1 else f'"[" ({item} {more})? "]"'
    if kind == "object":
        properties = _require(schema, "properties", where)
        if set(schema.get("required", [])) != set(properties):
            raise UnsupportedSchema(f"{where}: every property must be required")
        parts = [f"{_literal(json.dumps(name) + ':')} {_rule(value, f'{where}-{name}', rules)}" for name, value in properties.items()]
        return '"{" ' + ' "," '.join(parts) + ' "}"'
    raise UnsupportedSchema(f"{where}: unsupported schema {json.dumps(schema)[:80]}")


def compact_json_grammar(schema: dict) -> str:
    """GBNF for JSON of `schema`'s shape, written compactly; UnsupportedSchema outside the subset."""
    rules: dict[str, str] = {}
    rules["root"] = _rule(schema, "root", rules)
    rules["char"] = _CHAR
    return "".join(f"{name} ::= {body}\n" for name, body in rules.items())


def longest_output(schema: dict) -> int:
    """The most characters an answer under `compact_json_grammar(schema)` can have."""
    if "enum" in schema:
        return max(len(json.dumps(value, separators=(",", ":"))) for value in schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return 2 + schema["maxLength"]
    if kind == "integer":
        return max(len(str(schema["minimum"])), len(str(schema["maximum"])))
    if kind == "boolean":
        return 5
    if kind == "array":
        high = schema["maxItems"]
        return 2 + high * longest_output(schema["items"]) + max(high - 1, 0)
    properties = schema["properties"]
    return 2 + sum(len(json.dumps(name)) + 1 + longest_output(value) for name, value in properties.items()) + len(properties) - 1
