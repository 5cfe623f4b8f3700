"""How the work is done: one seam per external system.

    llama_server.py       a llama.cpp server (embeddings, chat, health)
    compressor.py         LLMLingua, loaded once per process
    compression_cache.py  its answers, cached in Redis
    metrics.py            per-kind call metrics in Redis
    broker.py             queue depth, on Redis or RabbitMQ
    task_events.py        Flower's task events, sent a batch at a time

Two rooms of their own sit below: `reembedding/` (the job runner with its
stores, lane and lease) and `ops/` (the operator's commands).
"""
