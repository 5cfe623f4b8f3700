"""Typed Celery tasks, one module per queue."""
