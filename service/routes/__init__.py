"""One APIRouter per resource. create_app includes ROUTERS in this order; adding a resource is one line here.

/predict comes first: routes are matched in order, and it is the one called thousands of times a second.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import checkpoints, datasets, health, jobs, metrics, models, predict, sweeps, workers

ROUTERS: list[APIRouter] = [
    predict.router,
    health.router,
    jobs.router,
    metrics.router,
    checkpoints.router,
    datasets.router,
    workers.router,
    models.router,
    sweeps.router,
]
