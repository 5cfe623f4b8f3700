"""The contract between Athena and the inference workers: what every message
and result is. Pydantic and the standard library only (tests/test_layout.py)."""
