"""Athena's documented import path for `athena_client.contract.errors`, which defines every name here."""

from athena_client.contract.errors import *  # noqa: F401,F403
