"""The `athena-inference` console script.

The command is installed with the client too, which lacks the workers'
dependencies; without them it says which extra to install instead of a traceback.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from athena_inference.workers.ops.cli import main as run
    except ImportError as exc:
        print(
            f"error: athena-inference needs the worker extra ({exc.name or exc} is not installed): "
            "pip install 'athena-inference[worker]'",
            file=sys.stderr,
        )
        return 2
    return run()


if __name__ == "__main__":
    sys.exit(main())
