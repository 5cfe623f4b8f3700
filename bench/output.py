"""How a bench hands in its figures: the table on stdout, the rows as JSON when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional


def emit(table: str, rows: Any, json_path: Optional[Path]) -> int:
    print(table, flush=True)
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2))
    return 0
