"""Re-embedding whole memory stores as resumable jobs.

`runner.py` drives a job: rows from a store (`stores/`), in token-sized
batches through the bulk lane (`lane.py`), vectors back into the store, with
the job's progress in its Redis record (`athena_client.shared_redis.job_store`). A job is
held by one runner at a time through a lease (`lease.py`), and vectors of
texts already seen come from a cache (`embedding_cache.py`).
"""
