"""Metric-store benchmark: what storing metrics costs training, how fast points go in, how fast a huge job reads.

Three parts, each against its peer in this one run, on SQLite and on PostgreSQL:

(a) training: ``worker.engine.fit()`` with the worker's own callbacks (``worker.recorder.JobRecorder`` and its background writer) storing
    points, progress and checkpoints in the database, against the same fit() storing nothing (no step points,
    only the final checkpoint, callbacks that drop everything). Goal: ratio >= 0.95, the median of the ratios of
    rounds that each run every variant once. The recorder hands its batches to the worker's writer process (the
    default); one variant applies them on its thread instead (TRAINSERVE_WRITER=thread), and one trains storing
    nothing while a child process writes the same points and checkpoints through the same recorder at training's
    pace: what the writes cost training when they share the machine but not the interpreter (its lock).
(b) ingestion: rows/s of ``service.metrics.record_points`` against the raw driver's fastest path: one
    ``executemany`` on SQLite, ``COPY`` on PostgreSQL (psycopg 3 ``cursor.copy``); in one transaction, and in
    batches of the worker's flush size with a transaction each.
(c) reading: ``GET /jobs/{id}/metrics?max_points=500`` through a live trainserve on a job holding 1,000,000
    points (written straight into metric_points), against the same request on a job with about 1,000; on
    PostgreSQL also the rows the queries read (EXPLAIN ANALYZE of each statement the read issues).

Run ``python -m bench.metrics_store [--quick]`` from the repository root. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sqlite3
import subprocess
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import torch
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from bench._report import Row, header, load_average, rows_table, write_json
from bench._stack import trainserve
from bench.train_loop import SEED_MLP, Case, FitAdapter, load_fit
from service import db
from service.metrics import read_points, recount_series, record_points
from service.migrate import migrate_to_head
from service.models import Job, utcnow
from service.settings import Settings, get_settings
from worker import writer_process
from bench._stack import create_pg_database, drop_pg_database

DATABASES = ("sqlite", "postgres")
DB_TITLES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
REDIS_DB = 14
MAX_POINTS = 500
COPY_SQL = "COPY metric_points (job_id, name, step, epoch, value, time) FROM STDIN"
INSERT_SQL = "INSERT INTO metric_points (job_id, name, step, epoch, value, time) VALUES (?, ?, ?, ?, ?, ?)"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@dataclass
class Sizes:
    fit_case: Case  # about 1.5 s of training (0.3 s with --quick) on 2 cores
    fit_repeats: int
    repeats: int  # of each ingestion run
    ingest_rows: int
    read_points: int
    get_repeats: int  # timed GETs per job

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(Case(SEED_MLP, 32, 8192, 3), 1, 1, 20_000, 200_000, 3)
        return cls(Case(SEED_MLP, 32, 8192, 16), 15, 3, 100_000, 1_000_000, 7)


# --- databases ----------------------------------------------------------------------------------------


@contextmanager
def scratch_databases(workdir: Path) -> Iterator[dict[str, str]]:
    """A migrated SQLite file and a migrated PostgreSQL database of our own, dropped afterwards."""
    pg_url = create_pg_database()
    urls = {"sqlite": f"sqlite:///{workdir / 'bench.db'}", "postgres": pg_url}
    try:
        for url in urls.values():
            migrate_to_head(url)
        yield urls
    finally:
        drop_pg_database(pg_url)


def engine_for(url: str, home: Path) -> Engine:
    return db.make_engine(Settings(home=home, database_url=url))


@contextmanager
def service_database(url: str, home: Path) -> Iterator[None]:
    """Points service.db's engine, which the worker's callbacks write through, at `url` for the block."""
    saved = {key: os.environ.get(key) for key in ("TRAINSERVE_DATABASE_URL", "TRAINSERVE_HOME")}
    os.environ.update(TRAINSERVE_DATABASE_URL=url, TRAINSERVE_HOME=str(home))
    caches = (get_settings, db.get_engine, db.get_sessionmaker, db.get_read_sessionmaker)
    for cache in caches:
        cache.cache_clear()
    try:
        yield
    finally:
        db.get_engine().dispose()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for cache in caches:
            cache.cache_clear()


def new_job(engine: Engine, *, owner: str | None = None) -> str:
    """A job row of the default tenant; leased to `owner` (running) when given, else finished."""
    with Session(engine) as session, session.begin():
        job = Job(tenant="default", name="bench-metrics", status="running" if owner else "succeeded", spec={},
                  report={}, data_info={}, last_metrics={}, lease_owner=owner,
                  lease_expires_at=utcnow() + timedelta(hours=1) if owner else None)
        session.add(job)
        session.flush()
        return job.id


# --- (a) training with the store on and off -----------------------------------------------------------

FIT_VARIANTS = {
    "off": "fit() storing nothing",
    "default": "fit() storing points + checkpoints, default cadence",
    "every": "fit() storing a point every step + a checkpoint every epoch",
    # The same writes applied on a thread of the training process (TRAINSERVE_WRITER=thread), not by the worker's
    # writer process (the default, as in the two rows above).
    "every_thread": "fit() storing a point every step + a checkpoint every epoch, written on a thread",
    # What the same writes cost training when no thread of its process makes them: the floor for any writer on this
    # machine (the database's and the writer's CPU, without sharing the interpreter lock).
    "elsewhere": "fit() storing nothing while another process writes what `every` writes, at training's pace",
}


def fit_spec(adapter: FitAdapter, case: Case, variant: str) -> Any:
    variant = "every" if variant == "every_thread" else variant
    spec = adapter.spec(case, log_every_steps=1 if variant == "every" else None, bare=variant == "off")
    if variant != "every":
        return spec
    checkpoint = spec.training.checkpoint.model_copy(update={"every_epochs": 1})
    return spec.model_copy(update={"training": spec.training.model_copy(update={"checkpoint": checkpoint})})


def start_recorder(spec: Any, *, on_thread: bool) -> tuple[Any, Any]:
    """The worker's BackgroundWriter (started, with the worker's default buffer) and a JobRecorder writing through
    it into a new job of the default tenant leased to this process, in service.db's database; the batches
    applied by this process's writer process (the worker's default, started before the timed runs) or on the
    writer's thread."""
    from worker.recorder import BackgroundWriter, JobRecorder, apply_here

    owner = f"bench-{os.getpid()}"
    apply = apply_here if on_thread else writer_process.for_settings(db.current_settings()).apply
    writer = BackgroundWriter(job_id=new_job(db.get_engine(), owner=owner), max_bytes=256 * 1024 * 1024, apply=apply)
    writer.start()
    return writer, JobRecorder(job_id=writer.job_id, owner=owner, spec=spec, writer=writer)


def regression_data(x: torch.Tensor, y: torch.Tensor) -> Any:
    from worker.data import TrainData

    return TrainData(x_train=x, y_train=y, x_val=None, y_val=None, task="regression")


def run_fit(adapter: FitAdapter, case: Case, variant: str, template: torch.nn.Module, x: torch.Tensor,
            y: torch.Tensor, replayer: Replayer | None = None) -> tuple[float, dict[str, int]]:
    """Seconds of one fit() and what it stored, with the worker's recorder writing to service.db's database."""
    spec = fit_spec(adapter, case, "off" if variant == "elsewhere" else variant)
    model = adapter.model_for(case, template)
    data = regression_data(x, y)
    stored = {"points": 0, "checkpoints": 0}
    writer = None
    if variant == "elsewhere":
        assert replayer is not None
        stored = replayer.start()
    if variant in ("off", "elsewhere"):
        callbacks: dict[str, Callable[..., None]] = {
            "on_points": lambda points: None, "on_checkpoint": lambda blob: None, "on_progress": lambda p: None}
    else:
        writer, recorder = start_recorder(spec, on_thread=variant == "every_thread")

        def on_points(points: list[Any]) -> None:
            stored["points"] += len(points)
            recorder.points(points)

        def on_checkpoint(blob: Any) -> None:
            stored["checkpoints"] += 1
            recorder.checkpoint(blob)

        callbacks = {"on_points": on_points, "on_checkpoint": on_checkpoint, "on_progress": recorder.progress}
    started = time.perf_counter()
    adapter.fit(model, spec, data, device="cpu", should_stop=lambda: False, **callbacks)
    if writer is not None:  # timed until every point and checkpoint is in the database, as the job's end is
        writer.flush()
        writer.close()
    seconds = time.perf_counter() - started
    if replayer is not None and variant == "elsewhere":
        replayer.wait()  # untimed: the next run must not share the machine with it
    return seconds, stored


class Replayer:
    """A child process (``--replay``) that writes one recorded `every` run's points, progress and checkpoints
    through the worker's recorder, epoch by epoch at a given pace, each time it is started."""

    def __init__(self, url: str, home: Path, spec: Any, calls: list[tuple[str, Any]], pace: float) -> None:
        self.path = home / "replay.pickle"
        self.path.write_bytes(pickle.dumps((spec, calls)))
        self.stored = {"points": sum(len(arg) for kind, arg in calls if kind == "points"),
                       "checkpoints": sum(kind == "checkpoint" for kind, _ in calls)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.metrics_store", "--replay", url, str(home), str(self.path), str(pace)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._expect("ready")

    def start(self) -> dict[str, int]:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return dict(self.stored)

    def wait(self) -> None:
        self._expect("done")

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if line != word:
            self.process.kill()
            raise RuntimeError(f"replay process said {line!r}, expected {word!r}")


def replay_main(url: str, home: Path, path: Path, pace: float) -> int:
    """The Replayer's child: on each "go" line, a new job of its own and the recorded writes into it, the epochs'
    writes `pace` seconds apart (training's pace), each flushed as the worker's writer would take them."""
    spec, calls = pickle.loads(path.read_bytes())
    with service_database(url, home):
        print("ready", flush=True)
        for _ in sys.stdin:
            writer, recorder = start_recorder(spec, on_thread=True)  # already another process
            started, epochs = time.perf_counter(), 0
            for kind, arg in calls:
                getattr(recorder, kind)(arg)
                if kind == "checkpoint":  # an epoch's end: its points, progress and checkpoint are queued
                    epochs += 1
                    time.sleep(max(0.0, started + epochs * pace - time.perf_counter()))
            writer.flush()
            writer.close()
            print("done", flush=True)
    return 0


def record_every_run(adapter: FitAdapter, case: Case, template: torch.nn.Module, x: torch.Tensor,
                     y: torch.Tensor) -> tuple[Any, list[tuple[str, Any]]]:
    """The `every` variant's spec and its callbacks' calls, in order, for a Replayer."""
    spec = fit_spec(adapter, case, "every")
    calls: list[tuple[str, Any]] = []
    adapter.fit(adapter.model_for(case, template), spec, regression_data(x, y), device="cpu", should_stop=lambda: False,
                on_points=lambda points: calls.append(("points", points)),
                on_checkpoint=lambda blob: calls.append(("checkpoint", blob)),
                on_progress=lambda progress: calls.append(("progress", progress)))
    return spec, calls


def measure_training(urls: dict[str, str], sizes: Sizes, home: Path) -> dict[str, dict[str, Any]]:
    adapter, why = load_fit()
    if adapter is None:
        raise RuntimeError(why)
    case = sizes.fit_case
    torch.manual_seed(0)
    template = case.workload.build()
    x, y = case.workload.make_data(case.n_rows)
    results: dict[str, dict[str, Any]] = {}
    spec, calls = record_every_run(adapter, case, template, x, y)
    for name, url in urls.items():
        seconds: dict[str, list[float]] = {v: [] for v in FIT_VARIANTS}
        stored: dict[str, dict[str, int]] = {}
        with service_database(url, home):
            pace = run_fit(adapter, case, "off", template, x, y)[0] / case.epochs  # an epoch of training
            replayer = Replayer(url, home, spec, calls, pace)
            writer_process.for_settings(db.current_settings()).start()  # as a worker starts it, before its jobs
            try:
                variants = list(FIT_VARIANTS)
                for rep in range(-1, sizes.fit_repeats):  # a warm-up, then repeats in rotating order
                    shift = max(rep, 0) % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        secs, stored[variant] = run_fit(adapter, case, variant, template, x, y, replayer)
                        if rep >= 0:
                            seconds[variant].append(secs)
            finally:
                replayer.close()
                writer_process.close_all()
        # Each round ran every variant once, back to back: a round's ratio compares runs seconds apart.
        rounds = {v: [off / secs for off, secs in zip(seconds["off"], s, strict=True)] for v, s in seconds.items()}
        results[name] = {"samples_per_s": {v: case.samples / statistics.median(s) for v, s in seconds.items()},
                         "seconds": seconds, "rounds": rounds, "stored": stored}
    return results


# --- (b) ingestion ------------------------------------------------------------------------------------


def make_points(n: int, first_step: int = 1) -> list[dict[str, Any]]:
    """Points as the worker hands them over: train_loss and lr at every step."""
    return [{"name": name, "step": step, "epoch": 1 + step // 1000, "value": 1.0 / step,
             "time": T0 + timedelta(milliseconds=step)}
            for step in range(first_step, first_step + n // 2) for name in ("train_loss", "lr")]


def batches(points: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [points[i : i + size] for i in range(0, len(points), size)]


def ingest_record_points(engine: Engine, job_id: str, chunks: list[list[dict[str, Any]]]) -> None:
    sessions = sessionmaker(bind=engine)
    for chunk in chunks:
        with sessions.begin() as session:
            record_points(session, job_id=job_id, points=chunk)


def ingest_floor(url: str, job_id: str, chunks: list[list[dict[str, Any]]]) -> None:
    """The driver's fastest path with nothing around it, a transaction per chunk."""
    if url.startswith("sqlite"):
        _executemany_sqlite(url.removeprefix("sqlite:///"), job_id, chunks)
    else:
        _copy_postgres(url, job_id, chunks)


def _executemany_sqlite(path: str, job_id: str, chunks: list[list[dict[str, Any]]]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # The service's own settings (service.db), so that only the code path differs.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for chunk in chunks:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_SQL, [(job_id, p["name"], p["step"], p["epoch"], p["value"],
                                           p["time"].isoformat(" ")) for p in chunk])
            conn.execute("COMMIT")
    finally:
        conn.close()


def _copy_postgres(url: str, job_id: str, chunks: list[list[dict[str, Any]]]) -> None:
    with psycopg.connect(url) as conn:
        for chunk in chunks:
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
                for p in chunk:
                    copy.write_row((job_id, p["name"], p["step"], p["epoch"], p["value"], p["time"]))


def measure_ingestion(urls: dict[str, str], sizes: Sizes, home: Path) -> dict[str, dict[str, Any]]:
    from worker.engine import FLUSH_EVERY_POINTS

    worker_batch = 2 * FLUSH_EVERY_POINTS  # the worker flushes after this many logged steps, 2 points each
    points = make_points(sizes.ingest_rows)
    modes = {"one transaction": [points], f"batches of {worker_batch}": batches(points, worker_batch)}
    results: dict[str, dict[str, Any]] = {}
    for name, url in urls.items():
        engine = engine_for(url, home)
        contenders: dict[str, Callable[[str, list[list[dict[str, Any]]]], None]] = {
            "record_points": lambda job_id, chunks: ingest_record_points(engine, job_id, chunks),
            "floor": lambda job_id, chunks: ingest_floor(url, job_id, chunks),
        }
        seconds: dict[str, list[float]] = {}
        for rep in range(sizes.repeats):
            for mode, chunks in modes.items():
                order = list(contenders) if rep % 2 == 0 else list(reversed(contenders))
                for contender in order:
                    job_id = new_job(engine)  # a fresh job: same table size for both, no step collisions
                    started = time.perf_counter()
                    contenders[contender](job_id, chunks)
                    seconds.setdefault(f"{contender}, {mode}", []).append(time.perf_counter() - started)
        engine.dispose()
        results[name] = {"rows_per_s": {k: len(points) / statistics.median(v) for k, v in seconds.items()},
                         "seconds": seconds, "modes": list(modes)}
    return results


# --- (c) reading a huge job ---------------------------------------------------------------------------


def huge_job_points(n: int) -> list[dict[str, Any]]:
    """A long run logged every step (train_loss and lr) with a val_loss every 50 steps: n points in all."""
    steps = n * 50 // 101
    points = make_points(2 * steps)
    points += [{"name": "val_loss", "step": s, "epoch": s // 50, "value": 1.0 / s, "time": T0}
               for s in range(50, 50 * (n - 2 * steps) + 1, 50)]
    return points


def plan_rows(node: dict[str, Any]) -> dict[str, int]:
    """Index entries and table rows a PostgreSQL plan node and its children read (EXPLAIN ANALYZE figures)."""
    kind = node["Node Type"]
    loops = node.get("Actual Loops", 1)
    seen = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    counts = {"index entries": 0, "table rows": 0}
    if kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
        counts["index entries"] += seen
    if kind in ("Index Scan", "Seq Scan", "Bitmap Heap Scan"):
        counts["table rows"] += seen
    counts["table rows"] += node.get("Heap Fetches", 0)
    for child in node.get("Plans", []):
        for key, value in plan_rows(child).items():
            counts[key] += value
    return counts


def rows_read(engine: Engine, job_id: str) -> dict[str, Any]:
    """Replays, under EXPLAIN, every statement one downsampled read issues; what they read, summed."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            statements.append((statement, parameters))

    with Session(engine) as session:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            returned = len(read_points(session, job_id=job_id, names=None, since_step=None, max_points=MAX_POINTS))
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        totals = {"statements": len(statements), "points returned": returned, "index entries": 0, "table rows": 0}
        explain = "EXPLAIN (ANALYZE, FORMAT JSON) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        plans = []
        for statement, parameters in statements:
            plan = session.connection().exec_driver_sql(explain + statement, parameters).all()
            plans.append([list(row) for row in plan])
            if engine.dialect.name == "postgresql":
                for key, value in plan_rows(plan[0][0][0]["Plan"]).items():
                    totals[key] += value
    if engine.dialect.name != "postgresql":
        # SQLite keeps no per-query row counts that Python can read: the plans show the access paths instead.
        totals["index entries"] = totals["table rows"] = -1
    return {**totals, "plans": plans}


def load_points(url: str, job_id: str, points: list[dict[str, Any]], engine: Engine) -> None:
    ingest_floor(url, job_id, [points])
    with Session(engine) as session, session.begin():  # the per-series counts the worker's writes keep
        recount_series(session, job_id=job_id)
    if url.startswith("postgresql"):
        # What autovacuum does soon after a bulk load: the visibility map lets index-only scans skip the table.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE metric_points")


def timed_gets(client: Any, job_id: str, repeats: int) -> list[float]:
    url = f"/jobs/{job_id}/metrics"
    client.get(url, params={"max_points": MAX_POINTS}).raise_for_status()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client.get(url, params={"max_points": MAX_POINTS}).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


def measure_reads(sizes: Sizes) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, stack in (("sqlite", "embedded"), ("postgres", "postgres")):
        with trainserve(stack, redis_db=REDIS_DB) as server, server.client(timeout=300) as client:
            url = server.env.get("TRAINSERVE_DATABASE_URL") or Settings(home=server.home, database_url="").database_url
            engine = engine_for(url, server.home)
            huge, small = new_job(engine), new_job(engine)
            huge_points = huge_job_points(sizes.read_points)
            started = time.perf_counter()
            load_points(url, huge, huge_points, engine)
            load_seconds = time.perf_counter() - started
            load_points(url, small, huge_job_points(1_000), engine)
            results[name] = {"points": len(huge_points), "load_seconds": load_seconds,
                             "huge_ms": timed_gets(client, huge, sizes.get_repeats),
                             "small_ms": timed_gets(client, small, sizes.get_repeats),
                             "read": rows_read(engine, huge)}
            engine.dispose()
    return results


# --- report -------------------------------------------------------------------------------------------


def table_rows(training: dict[str, Any], ingestion: dict[str, Any], reads: dict[str, Any], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    case = sizes.fit_case
    for name in DATABASES:
        sps, stored, rounds = (training[name][key] for key in ("samples_per_s", "stored", "rounds"))
        for variant in ("default", "every", "every_thread", "elsewhere"):
            rows.append(Row(f"(a) {FIT_VARIANTS[variant]}, {DB_TITLES[name]} (samples/s)", sps[variant],
                            FIT_VARIANTS["off"], sps["off"], unit="samples/s", digits=0, rounds=rounds[variant],
                            note=f"{stored[variant]['points']} points, {stored[variant]['checkpoints']} checkpoints; "
                                 f"seed MLP, batch {case.batch_size}, {case.n_rows * case.epochs:,} samples"))
    for name in DATABASES:
        floor = "executemany" if name == "sqlite" else "COPY"
        per_s = ingestion[name]["rows_per_s"]
        for mode in ingestion[name]["modes"]:
            rows.append(Row(f"(b) record_points, {mode}, {DB_TITLES[name]} (rows/s)", per_s[f"record_points, {mode}"],
                            f"raw {floor}, {mode}", per_s[f"floor, {mode}"], unit="rows/s", digits=0,
                            note=f"{sizes.ingest_rows:,} points"))
    for name in DATABASES:
        read = reads[name]
        huge, small = statistics.median(read["huge_ms"]), statistics.median(read["small_ms"])
        rows.append(Row(f"(c) GET metrics?max_points={MAX_POINTS}, {read['points']:,} points, {DB_TITLES[name]} (ms)",
                        huge, "the same GET on a job with 1,000 points", small, unit="ms", digits=1,
                        note=f"median of {len(read['huge_ms'])}; {read['read']['statements']} SQL statements"))
        if name == "postgres":
            scanned = read["read"]
            rows.append(Row("(c) table rows read by that GET, PostgreSQL (rows)", scanned["table rows"],
                            "points in the job", read["points"], unit="rows", digits=0,
                            note=f"{scanned['index entries']:,} index entries to find the "
                                 f"{scanned['points returned']:,} points returned (series counted at write time)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_store", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, one repeat: a smoke run")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON (bench/results/...)")
    parser.add_argument("--replay", nargs=4, metavar=("URL", "HOME", "PICKLE", "PACE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.replay:  # the Replayer's child process
        url, home, path, pace = args.replay
        return replay_main(url, Path(home), Path(path), float(pace))
    sizes = Sizes.for_run(args.quick)
    started, load = time.perf_counter(), load_average()

    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp, scratch_databases(Path(tmp)) as urls:
        training = measure_training(urls, sizes, Path(tmp))
        ingestion = measure_ingestion(urls, sizes, Path(tmp))
    reads = measure_reads(sizes)
    rows = table_rows(training, ingestion, reads, sizes)

    print(header("bench.metrics_store", load, args.quick))
    print(f"(a): {sizes.fit_repeats} rounds, each running every variant once in rotating order; samples/s are the "
          "medians, a ratio is the median of the rounds' ratios, with their quartiles; (b): median of "
          f"{sizes.repeats}\n")
    print(rows_table(rows))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    write_json("metrics_store", {"quick": args.quick, "load_average_start": load, "load_average_end": load_average(),
                                 "rows": [r.to_json() for r in rows], "training": training, "ingestion": ingestion,
                                 "reads": reads}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
