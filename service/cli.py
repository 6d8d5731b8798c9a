"""`trainserve-server`: up (the embedded default), api, worker, migrate, keys create/revoke."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from service.settings import Settings, get_settings

log = logging.getLogger("trainserve.server")

RESTART_BACKOFF_SECONDS = (1, 2, 5, 10, 30)
HEALTHY_RUN_SECONDS = 60


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)


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
    path.write_text(key + "\n")
    path.chmod(0o600)
    print(f"API key for tenant 'default' (also written to {path}):\n  {key}")
    return path


def cmd_api(settings: Settings) -> int:
    import uvicorn

    uvicorn.run("service.api:app", host=settings.host, port=settings.port, log_level=settings.log_level.lower())
    return 0


def cmd_worker(settings: Settings, *, queues: str | None, concurrency: int | None) -> int:
    from worker.celery_app import app

    n = concurrency or settings.worker_concurrency
    argv = ["worker", "--queues", queues or settings.worker_queues, "--concurrency", str(n),
            "--pool", "solo" if n == 1 else "prefork", "--loglevel", settings.log_level.upper(),
            "--hostname", f"trainserve-{os.getpid()}@{socket.gethostname()}", "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


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
    worker.add_argument("--queues", help="comma-separated queues (default TRAINSERVE_WORKER_QUEUES, 'cpu')")
    worker.add_argument("--concurrency", type=int, help="jobs trained at once by this worker")
    sub.add_parser("migrate", help="migrate the database to the latest schema")
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
    _setup_logging(settings)
    if args.command == "up":
        return cmd_up(settings)
    if args.command == "api":
        return cmd_api(settings)
    if args.command == "worker":
        return cmd_worker(settings, queues=args.queues, concurrency=args.concurrency)
    if args.command == "migrate":
        return cmd_migrate(settings)
    return cmd_keys(args)


if __name__ == "__main__":
    sys.exit(main())
