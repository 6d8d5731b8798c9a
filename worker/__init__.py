"""trainserve worker: the Celery app, task bodies, data loading and the training engine."""
