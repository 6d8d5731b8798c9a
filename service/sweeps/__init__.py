"""Sweeps: a base spec plus a search space, searched by Optuna's samplers and pruners; trials are jobs.

- `space`: space keys (JSON paths), distributions, and the path helpers.
- `checks`: what is refused before anything is stored.
- `study`: the in-memory Optuna study rebuilt from our tables for each decision.
- `core`: the use cases (create, read, list, cancel, delete) and driving (advance, prune).
"""

from service.sweeps.core import (
    Send,
    SweepNotFound,
    advance_sweep,
    cancel_sweep,
    create_sweep,
    delete_sweep,
    get_sweep_or_raise,
    list_sweeps,
    pruning_metric,
    running_sweep_ids,
    should_prune,
    sweep_read,
)
from service.sweeps.dispatch import advance_and_send, advance_running_sweeps, send_trials

__all__ = [
    "Send", "SweepNotFound", "advance_sweep", "cancel_sweep", "create_sweep", "delete_sweep", "get_sweep_or_raise",
    "list_sweeps", "pruning_metric", "running_sweep_ids", "should_prune", "sweep_read", "advance_and_send",
    "advance_running_sweeps", "send_trials",
]
