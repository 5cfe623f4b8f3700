"""Athena's documented import path for `athena_client.contract.jobs`, which defines every name here."""

from athena_client.contract.jobs import *  # noqa: F401,F403
