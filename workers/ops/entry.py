"""The `athena-inference` console script.

The command is installed with the client too, which lacks the workers'
dependencies; without them it says which extra to install instead of a traceback.
Loading the commands reads the settings (the Celery app is built at import), so
an invalid setting is reported here as one line too, as the commands report it.
"""

from __future__ import annotations

import sys


def main() -> int:
    from athena_client.contract.errors import ConfigurationError

    try:
        from athena_inference.workers.ops.cli import main as run
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
