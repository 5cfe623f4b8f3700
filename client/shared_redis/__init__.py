"""The Redis the workers and the client share: how both reach it through a
restart, the Celery options both apps set, and the records both keep there
(metrics, job records). Imports the contract, redis and kombu; never the client."""
