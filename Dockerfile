# syntax=docker/dockerfile:1
# trainserve: one image runs the API and the workers (different commands). Two flavours of PyTorch:
#   docker build -t trainserve:cpu .                                  # CPU-only torch: the small image (default)
#   docker build --build-arg TORCH_FLAVOR=cuda -t trainserve:cuda .   # CUDA torch for GPU workers
# The CUDA wheels bring their own CUDA runtime; the host needs only the NVIDIA driver and container toolkit.
ARG PYTHON_VERSION=3.11
ARG TORCH_FLAVOR=cpu

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# --- build stages: a virtual environment with torch, then the app, copied whole into the runtime -----------
FROM base AS torch-cpu
ARG TORCH_VERSION=2.13.0
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu

FROM base AS torch-cuda
ARG TORCH_VERSION=2.13.0
# PyPI's Linux wheels are the CUDA builds.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "torch==${TORCH_VERSION}"

FROM torch-${TORCH_FLAVOR} AS build
WORKDIR /src
# Dependencies first (they change less often than the code), then the package itself without them. The runtime
# dependencies are pyproject.toml's [project] dependencies, all of them: onnx (export), optuna (sweeps),
# scikit-learn (the builtin data sets), psycopg, redis...; torch is already there, so pip keeps it.
COPY pyproject.toml README.md ./
RUN mkdir -p service worker migrations && touch service/__init__.py worker/__init__.py migrations/__init__.py \
 && /opt/venv/bin/pip install . && /opt/venv/bin/pip uninstall -y trainserve-server
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-deps . \
 && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +
# A missing runtime dependency fails the build here, not the first export or sweep in production. The modules:
# the API's factory (uvicorn runs service.app:create_app), the worker's Celery app, task bodies and loop, export
# and sweeps with the libraries they load lazily. Run outside /src so the installed package is the one imported.
WORKDIR /
RUN /opt/venv/bin/python -c "import service.app, service.cli, service.export, service.sweeps, \
worker.celery_app, worker.tasks, worker.engine, onnx, optuna, sklearn"

# --- runtime: no compilers, no build files, a non-root user ------------------------------------------------
FROM base AS runtime
RUN useradd --create-home --uid 10001 trainserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    TRAINSERVE_HOME=/home/trainserve/.trainserve \
    TRAINSERVE_HOST=0.0.0.0 \
    TRAINSERVE_PORT=8000 \
    TRAINSERVE_WORKER_METRICS_PORT=9101 \
    TRAINSERVE_LOG_FORMAT=json
USER trainserve
WORKDIR /home/trainserve
# 8000: the API (and its /metrics); 9101: a worker's /metrics.
EXPOSE 8000 9101
# The API's check; compose gives workers `trainserve-server healthcheck --worker` instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 CMD ["trainserve-server", "healthcheck"]
CMD ["trainserve-server", "api"]
