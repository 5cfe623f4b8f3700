"""What can be set: settings, the Celery app and its queues."""
