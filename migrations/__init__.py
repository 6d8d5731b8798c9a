"""Alembic migrations for trainserve's tables."""
