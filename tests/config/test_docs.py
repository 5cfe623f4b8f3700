"""docs/settings.md and the Settings class say the same thing."""

from __future__ import annotations

import re
from pathlib import Path

from athena_inference.config.settings import Settings, env_name

SETTINGS_DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def documented_settings() -> set[str]:
    return set(re.findall(r"^\| `((?:ATHENA|LLAMACPP)_[A-Z0-9_]+)` \|", SETTINGS_DOC.read_text(), re.MULTILINE))


def test_every_setting_is_in_the_readme_table():
    assert {env_name(field) for field in Settings.model_fields} <= documented_settings()


def test_the_readme_table_lists_no_setting_that_does_not_exist():
    assert documented_settings() <= {env_name(field) for field in Settings.model_fields}


def test_readme_defaults_match_the_code():
    text = SETTINGS_DOC.read_text()
    for field, info in Settings.model_fields.items():
        default = info.default
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            shown = re.search(rf"^\| `{env_name(field)}` \| `([^`]*)`", text, re.MULTILINE)
            assert shown is not None, env_name(field)
            assert float(shown.group(1)) == float(default), env_name(field)


DOCS = [Path(__file__).resolve().parents[2] / "README.md", *sorted((Path(__file__).resolve().parents[2] / "docs").glob("*.md"))]


def test_every_command_the_docs_name_exists():
    from athena_inference.workers.ops.cli import cli

    commands = set(cli.commands)
    for doc in DOCS:
        named = set(re.findall(r"athena-inference ([a-z][a-z-]+)", doc.read_text()))
        assert named <= commands, f"{doc.name} names {sorted(named - commands)}"


def test_every_doc_link_points_at_a_file():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}"
