# trainserve image: the API and the workers run from the same image with different commands.
#   docker build -t trainserve .                                  # PyTorch as PyPI serves it (CUDA-enabled on Linux)
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t trainserve:cpu .   # a much smaller CPU image
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# torch first, in its own layer: it is by far the largest and changes least often.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    else pip install "torch==${TORCH_VERSION}"; fi

COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
RUN pip install .

RUN useradd --create-home --uid 10001 trainserve
USER trainserve
ENV TRAINSERVE_HOME=/home/trainserve/.trainserve \
    TRAINSERVE_HOST=0.0.0.0 \
    TRAINSERVE_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)" || exit 1
CMD ["trainserve-server", "api"]
