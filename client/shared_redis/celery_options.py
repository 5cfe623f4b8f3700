"""The Celery options both apps share: the workers' (config/celery.py) and the client's (client/transport.py)."""

# Celery's defaults, minus pickle: a caller never accepts anything but JSON.
JSON_ONLY = dict(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
)

# A Redis restart takes its broker away for a second or two, longer while it
# reloads a large append-only file. Celery's default publish retries last
# 0.6 s, and a send 8 s into an outage failed (tests/config/
# test_redis_restart_integration.py); these wait about 35 s before the send
# fails, so a restart holds a caller up instead of failing it.
PUBLISH_RETRY_POLICY = {"max_retries": 20, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
# Reading or deleting a result retries through a Redis restart the same way
# (Celery retries these only when told to), with backoff up to 10 s.
RESULT_RETRIES = dict(result_backend_always_retry=True, result_backend_max_retries=20)
