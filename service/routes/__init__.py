"""One APIRouter per resource. create_app includes ROUTERS in this order; adding a resource is one line here.

/predict is not among them: it is called thousands of times a second, so create_app adds it to the app's own router
first (service.routes.predict.install), ahead of every included router.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.routes import checkpoints, datasets, health, jobs, metrics, models, sweeps, workers

ROUTERS: list[APIRouter] = [
    health.router,
    jobs.router,
    metrics.router,
    checkpoints.router,
    datasets.router,
    workers.router,
    models.router,
    sweeps.router,
]
