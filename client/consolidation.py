"""Athena's documented import path for `athena_client.contract.consolidation`, which defines every name here."""

from athena_client.contract.consolidation import *  # noqa: F401,F403
