"""`trainserve-server`: up (the embedded default), api, worker, migrate, healthcheck, keys create/revoke."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from service.logs import setup_logging
from service.settings import Settings, get_settings

log = logging.getLogger("trainserve.server")

RESTART_BACKOFF_SECONDS = (1, 2, 5, 10, 30)
HEALTHY_RUN_SECONDS = 60


def cmd_migrate(settings: Settings) -> int:
    from service.migrate import migrate_to_head

    settings.home.mkdir(parents=True, exist_ok=True)
    migrate_to_head(settings.database_url)
    print(f"database at head: {_redacted(settings.database_url)}")
    return 0


def _redacted(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cmd_keys(args: argparse.Namespace) -> int:
    from service.auth import create_api_key, revoke_api_key
    from service.db import session_scope
    from service.errors import NotFound

    with session_scope() as session:
        if args.keys_command == "create":
            print(create_api_key(session, tenant=args.tenant))
            return 0
        try:
            revoke_api_key(session, key=args.key)
        except NotFound:
            print("no such API key", file=sys.stderr)
            return 1
    print("revoked")
    return 0


def ensure_default_key(settings: Settings) -> Path:
    """On first start, create the `default` tenant's key and write it to $TRAINSERVE_HOME/api-key."""
    from service.auth import create_api_key
    from service.db import session_scope

    path = settings.home / "api-key"
    if path.exists() and path.read_text().strip():
        print(f"API key for tenant 'default': {path}")
        return path
    with session_scope() as session:
        key = create_api_key(session, tenant="default")
    # Created 0600 in the open call itself: a write-then-chmod leaves the key world-readable for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    path.chmod(0o600)  # an older file created by a write-then-chmod keeps its mode under O_TRUNC
    print(f"API key for tenant 'default' (also written to {path}):\n  {key}")
    return path


def database_ready(settings: Settings) -> bool:
    """False, having said what to run, when the database is not at the latest migration."""
    from sqlalchemy.exc import OperationalError

    from service.migrate import DatabaseBehind, check_at_head

    try:
        check_at_head(settings.database_url)
    except DatabaseBehind as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return False
    except OperationalError as exc:
        # Unreachable, not behind: start anyway, as a database that is briefly down must not keep the service
        # down; /readyz says 503 until it answers (and requests get 503 with Retry-After).
        log.warning("start.database_unreachable error=%s: starting; /readyz reports it", exc.__class__.__name__)
    return True


def cmd_api(settings: Settings) -> int:
    import uvicorn

    if not database_ready(settings):
        return 2
    # A factory: the app is built in the serving process, from these settings, never at import.
    # log_config=None: uvicorn's loggers go through ours (text or JSON); the API logs each request itself.
    uvicorn.run("service.app:create_app", factory=True, host=settings.host, port=settings.port,
                log_level=settings.log_level.lower(), log_config=None, access_log=False)
    return 0


def cmd_worker(settings: Settings, *, queues: str | None, concurrency: int | None) -> int:
    from service.queue import QUEUES

    n = concurrency or settings.worker_concurrency
    names = [q.strip() for q in (queues or settings.worker_queues).split(",") if q.strip()]
    if names == ["auto"]:
        names = ["gpu", "cpu"] if _cuda_available() else ["cpu"]
    unknown = sorted(set(names) - set(QUEUES))
    if not names or unknown:
        print(f"unknown queue(s) {', '.join(unknown) or '(none given)'}; the queues are {', '.join(QUEUES)}",
              file=sys.stderr)
        return 2
    if not database_ready(settings):
        return 2
    if "gpu" in names and not _cuda_available():
        # A CUDA job taken here could only fail; leaving it queued (with a reason the API shows) is better.
        print("this host has no usable CUDA device: a worker on the 'gpu' queue needs one "
              "(start CPU workers with --queues cpu)", file=sys.stderr)
        return 2
    if n > 1:
        # Several training processes: their Prometheus series are summed through files in this folder.
        # Emptied first: a restarted container reuses its pid, and old files would be summed into new counters.
        folder = settings.home / f"prometheus-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from worker.celery_app import WORKER_OPTIONS, get_celery

    WORKER_OPTIONS.update(queues=names, concurrency=n)
    argv = ["worker", "--queues", ",".join(names), "--concurrency", str(n),
            "--pool", "solo" if n == 1 else "prefork", "--loglevel", settings.log_level.upper(),
            "--hostname", f"trainserve-{os.getpid()}@{socket.gethostname()}", "--without-gossip", "--without-mingle"]
    get_celery().worker_main(argv)
    return 0


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cmd_healthcheck(settings: Settings, *, worker: bool) -> int:
    """For container health checks: the API answers /healthz, or a worker's metrics endpoint answers."""
    import urllib.request

    port = settings.worker_metrics_port if worker else settings.port
    url = f"http://127.0.0.1:{port}/metrics" if worker else f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


class Supervisor:
    """Runs the API and a worker as child processes; restarts a worker that dies; stops both on a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = False
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_restarts = 0
        self.worker_started = 0.0

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # Each child leads its own process group, so a stop reaches everything it started.
        return subprocess.Popen([sys.executable, "-m", "service.cli", *args], start_new_session=True)

    def _write_pid(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        (self.settings.home / f"{name}.pid").write_text(f"{proc.pid}\n")

    def start_worker(self) -> None:
        self.worker = self._spawn("worker")
        self.worker_started = time.monotonic()
        self._write_pid("worker", self.worker)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.api = self._spawn("api")
        self._write_pid("api", self.api)
        self.start_worker()
        print(f"trainserve is up: http://{self.settings.host}:{self.settings.port}  (docs at /docs, Ctrl-C stops)",
              flush=True)
        code = 0
        while not self.stopping:
            time.sleep(0.5)
            if self.api.poll() is not None:
                log.error("api exited with %s; stopping", self.api.returncode)
                code = 1
                break
            if self.worker is not None and self.worker.poll() is not None and not self.stopping:
                if time.monotonic() - self.worker_started > HEALTHY_RUN_SECONDS:
                    self.worker_restarts = 0  # a worker that ran a while was healthy: start the backoff afresh
                delay = RESTART_BACKOFF_SECONDS[min(self.worker_restarts, len(RESTART_BACKOFF_SECONDS) - 1)]
                log.warning("worker.died code=%s; restarting in %ss", self.worker.returncode, delay)
                self.worker_restarts += 1
                time.sleep(delay)
                if not self.stopping:
                    self.start_worker()
        self.shutdown()
        return code

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        children = [p for p in (self.worker, self.api) if p is not None and p.poll() is None]
        for proc in children:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for proc in children:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        print("trainserve stopped", flush=True)


def cmd_up(settings: Settings) -> int:
    settings.home.mkdir(parents=True, exist_ok=True)
    cmd_migrate(settings)
    ensure_default_key(settings)
    return Supervisor(settings).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainserve-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="migrate, create the default key, run the API and a worker (embedded default)")
    sub.add_parser("api", help="run the HTTP API (uvicorn)")
    worker = sub.add_parser("worker", help="run a Celery training worker")
    worker.add_argument("--queues", help="comma-separated queues: cpu, gpu, or auto (gpu and cpu where CUDA works, "
                                         "else cpu); default TRAINSERVE_WORKER_QUEUES, auto")
    worker.add_argument("--concurrency", type=int, help="jobs trained at once by this worker")
    sub.add_parser("migrate", help="migrate the database to the latest schema")
    health = sub.add_parser("healthcheck", help="exit 0 if the API (or, with --worker, this host's worker) answers")
    health.add_argument("--worker", action="store_true", help="check the worker's metrics port instead of the API")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant; prints only the key")
    create.add_argument("--tenant", required=True)
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    setup_logging(settings)
    if args.command == "up":
        return cmd_up(settings)
    if args.command == "api":
        return cmd_api(settings)
    if args.command == "worker":
        return cmd_worker(settings, queues=args.queues, concurrency=args.concurrency)
    if args.command == "migrate":
        return cmd_migrate(settings)
    if args.command == "healthcheck":
        return cmd_healthcheck(settings, worker=args.worker)
    return cmd_keys(args)


if __name__ == "__main__":
    sys.exit(main())
