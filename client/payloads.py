"""Athena's documented import path for `athena_client.contract.payloads`, which defines every name here."""

from athena_client.contract.payloads import *  # noqa: F401,F403
