"""The ``trainserve`` command line: tables for people, ``--json`` for scripts, exit codes scripts can trust.

Exit codes: 0 ok; 1 the job failed or was cancelled (``submit --follow``), or a state conflict; 2 usage or
validation error; 3 not found; 4 authentication; 5 server, rate limit or connection error.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainserve.client import Client
from trainserve.errors import (
    AuthError,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServerError,
    TrainserveError,
    ValidationError,
)
from trainserve.models import Job, MetricPoint, Report

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_SERVER = 5

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="trainserve",
    help="Train PyTorch networks described as JSON on a trainserve server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
jobs_app = typer.Typer(help="List, show, cancel and delete jobs.", no_args_is_help=True)
datasets_app = typer.Typer(help="Upload and list datasets.", no_args_is_help=True)
checkpoints_app = typer.Typer(help="List and download checkpoints.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(datasets_app, name="datasets")
app.add_typer(checkpoints_app, name="checkpoints")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


@dataclass
class _State:
    url: str | None
    api_key: str | None
    timeout: float
    retries: int
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.api_key, self.timeout, retries=self.retries)
        return self._client


def exit_code_for(exc: TrainserveError) -> int:
    """The exit status a script can branch on for each kind of error."""
    if isinstance(exc, (ValidationError, PayloadTooLarge)):
        return EXIT_USAGE
    if isinstance(exc, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, AuthError):
        return EXIT_AUTH
    if isinstance(exc, Conflict):
        return EXIT_JOB_FAILED
    if isinstance(exc, ServerError):
        return EXIT_SERVER
    return EXIT_SERVER if exc.status_code is None or exc.status_code >= 429 else EXIT_USAGE


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    try:
        yield
    except TrainserveError as exc:
        err.print(f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}")
        raise typer.Exit(exit_code_for(exc)) from None
    except (OSError, ValueError, TypeError) as exc:
        # Unreadable files, bad JSON or CSV given on the command line are usage errors.
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_USAGE) from None


def _state(ctx: typer.Context) -> _State:
    state = ctx.find_root().obj
    assert isinstance(state, _State)
    return state


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    typer.echo(json.dumps(value, indent=2))


def _split(values: Sequence[str] | None) -> list[str] | None:
    # Accept `--names a --names b` and `--names a,b` alike.
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _fmt_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _fmt_shape(shape: Sequence[int] | None) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")" if shape is not None else "-"


def _id_column(table: Table, ids: Sequence[str]) -> None:
    # Ids are what people copy into the next command: never truncate them, squeeze the other columns instead.
    table.add_column("id", no_wrap=True, min_width=max((len(i) for i in ids), default=2))


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="Server URL (else $TRAINSERVE_URL, else localhost:8000).")] = None,
    api_key: Annotated[
        str | None, typer.Option("--api-key", help="API key (else $TRAINSERVE_API_KEY, else $TRAINSERVE_HOME/api-key).")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per HTTP request.")] = 30.0,
    retries: Annotated[int, typer.Option("--retries", help="Retries of connection failures and 503s.")] = 3,
) -> None:
    ctx.obj = _State(url=url, api_key=api_key, timeout=timeout, retries=retries)


# --- validate / submit --------------------------------------------------------------------------------


def render_report(report: Report, console: Console) -> None:
    """The static check as people read it: one row per layer, then totals, warnings and errors with paths."""
    if report.layers:
        table = Table(title="layers")
        table.add_column("#", justify="right")
        table.add_column("type")
        table.add_column("output shape")
        table.add_column("params", justify="right")
        for layer in report.layers:
            table.add_row(str(layer.index), layer.type, _fmt_shape(layer.output_shape), f"{layer.params:,}")
        console.print(table)
    facts = [
        ("input shape", _fmt_shape(report.input_shape)),
        ("output shape", _fmt_shape(report.output_shape)),
        ("total params", f"{report.total_params:,}" if report.total_params is not None else None),
        ("FLOPs per sample", f"{report.flops_per_sample:,}" if report.flops_per_sample is not None else None),
        ("memory", f"{report.memory_bytes:,} bytes" if report.memory_bytes is not None else None),
        ("steps", f"{report.total_steps:,}" if report.total_steps is not None else None),
    ]
    shown = [f"{k}: {v}" for k, v in facts if v not in (None, "-")]
    if shown:
        console.print(" · ".join(shown))
    for problem in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(problem.loc)}: {escape(problem.msg)}")
    for problem in report.errors:
        console.print(f"[red]error[/red] {escape(problem.loc)}: {escape(problem.msg)}")
    console.print("[green]ok[/green]" if report.ok else f"[red]invalid[/red]: {len(report.errors)} error(s)")


@app.command()
def validate(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="A JSON spec file.")],
    as_json: JsonOpt = False,
) -> None:
    """Statically check a spec: per-layer shapes and parameters, warnings and errors with their paths."""
    with _errors_to_exit():
        report = _state(ctx).client().jobs.validate(spec)
    if as_json:
        _print_json(report)
    else:
        render_report(report, out)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_USAGE)


def _job_summary(job: Job) -> str:
    parts = [f"job {job.id} {job.status}"]
    if job.best is not None and job.best.value is not None:
        parts.append(f"best {job.best.metric}={job.best.value:.6g} at step {job.best.step}")
    if job.error:
        parts.append(f"error: {job.error}")
    return " · ".join(parts)


@app.command()
def submit(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="A JSON spec file.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for the job, with a progress bar.")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between status polls with --follow.")] = 1.0,
    idempotency_key: Annotated[str | None, typer.Option(help="Reuse to make a resubmission return the same job.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Submit a spec; with --follow, wait and exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with _errors_to_exit():
        client = _state(ctx).client()
        job = client.jobs.create(spec, idempotency_key=idempotency_key)
        if not follow:
            if as_json:
                _print_json(job)
            else:
                out.print(f"submitted job {job.id} ({job.status})")
            return
        err.print(f"submitted job {job.id}")
        job = client.jobs.wait(job.id, progress=True, poll_interval=poll_interval)
    if as_json:
        _print_json(job)
    else:
        colour = "green" if job.status == "succeeded" else "red"
        out.print(f"[{colour}]{escape(_job_summary(job))}[/{colour}]")
    raise typer.Exit(EXIT_OK if job.status == "succeeded" else EXIT_JOB_FAILED)


# --- jobs -----------------------------------------------------------------------------------------------


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many jobs (0: all).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first."""
    with _errors_to_exit():
        jobs = list(_state(ctx).client().jobs.list(status=status, max_items=limit or None))
    if as_json:
        _print_json(jobs)
        return
    table = Table()
    _id_column(table, [job.id for job in jobs])
    for column in ("name", "status", "progress", "created", "best"):
        table.add_column(column)
    for job in jobs:
        best = f"{job.best.metric}={job.best.value:.4g}" if job.best and job.best.value is not None else "-"
        table.add_row(job.id, job.name or "-", job.status, f"{job.progress.fraction:.0%}", _fmt_time(job.created_at), best)
    out.print(table)


@jobs_app.command("show")
def jobs_show(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")], as_json: JsonOpt = False) -> None:
    """One job: status, progress, timestamps, best and last metrics."""
    with _errors_to_exit():
        job = _state(ctx).client().jobs.get(job_id)
    if as_json:
        _print_json(job)
        return
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    p = job.progress
    rows = [
        ("id", job.id), ("name", job.name or "-"), ("status", job.status), ("device", job.device or "-"),
        ("queue", job.queue or "-"),
        *([("waiting", job.waiting_reason)] if job.waiting_reason else []),
        ("progress", f"epoch {p.epoch}/{p.epochs or '?'} · step {p.step}/{p.total_steps or '?'} · {p.fraction:.0%}"),
        ("eta", f"{p.eta_seconds:.0f}s" if p.eta_seconds is not None else "-"),
        ("created", _fmt_time(job.created_at)), ("started", _fmt_time(job.started_at)),
        ("finished", _fmt_time(job.finished_at)), ("attempts", str(job.attempts)),
        ("best", f"{job.best.metric}={job.best.value} (step {job.best.step}, {job.best.checkpoint_id})"
         if job.best and job.best.value is not None else "-"),
        ("error", job.error or "-"),
    ]
    rows += [(name, "non-finite" if value is None else f"{value:.6g}") for name, value in sorted(job.last_metrics.items())]
    for field, value in rows:
        table.add_row(field, value)
    out.print(table)


@jobs_app.command("cancel")
def jobs_cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")], as_json: JsonOpt = False) -> None:
    """Cancel a queued or running job (exit 1 if it already finished)."""
    with _errors_to_exit():
        job = _state(ctx).client().jobs.cancel(job_id)
    if as_json:
        _print_json(job)
    else:
        out.print(f"job {job.id} {job.status}" + (" (cancel requested)" if job.cancel_requested and not job.finished else ""))


@jobs_app.command("delete")
def jobs_delete(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")], as_json: JsonOpt = False) -> None:
    """Delete a finished job with its metrics and checkpoints."""
    with _errors_to_exit():
        _state(ctx).client().jobs.delete(job_id)
    if as_json:
        _print_json({"id": job_id, "deleted": True})
    else:
        out.print(f"deleted job {job_id}")


# --- metrics ------------------------------------------------------------------------------------------


def _series_table(points: Sequence[MetricPoint]) -> Table:
    table = Table()
    for column in ("name", "points", "first step", "last step", "last", "min", "max"):
        table.add_column(column, justify="left" if column == "name" else "right")
    series: dict[str, list[MetricPoint]] = {}
    for point in points:
        series.setdefault(point.name, []).append(point)
    for name, pts in series.items():
        # A value the server sends as null (not finite) shows as "-" and takes no part in min/max.
        values = [p.value for p in pts if p.value is not None]
        last = pts[-1].value
        table.add_row(name, str(len(pts)), str(pts[0].step), str(pts[-1].step),
                      "-" if last is None else f"{last:.6g}", f"{min(values):.6g}" if values else "-",
                      f"{max(values):.6g}" if values else "-")
    return table


@app.command()
def metrics(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    names: Annotated[list[str] | None, typer.Option("--names", help="Series to fetch (repeat or comma-separate).")] = None,
    since_step: Annotated[int | None, typer.Option(help="Only points after this step.")] = None,
    max_points: Annotated[int | None, typer.Option(help="Downsample each series to this many points.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print the points as CSV.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """A job's metric points: a per-series summary, every point with --json, or CSV with --csv."""
    with _errors_to_exit():
        jobs = _state(ctx).client().jobs
        if as_csv:
            typer.echo(jobs.metrics_csv(job_id, names=_split(names), since_step=since_step, max_points=max_points), nl=False)
            return
        page = jobs.metrics_page(job_id, names=_split(names), since_step=since_step, max_points=max_points)
    if as_json:
        _print_json(page)
    else:
        out.print(_series_table(page.points))
        out.print(f"job {page.job_id} {page.status or ''} · last step {page.last_step}")


# --- predict --------------------------------------------------------------------------------------------


def read_inputs(path: Path) -> list[Any]:
    """Rows from a JSON file (a list of rows, or ``{"inputs": [...]}``) or a CSV file (a header row is skipped)."""
    text = path.read_text()
    if path.suffix.lower() != ".csv":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "inputs" in data:
            data = data["inputs"]
        if isinstance(data, list):
            return data
        if data is not None:
            raise ValueError(f"{path}: expected a JSON list of rows or an object with 'inputs'")
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    parsed: list[list[float]] = []
    for index, row in enumerate(rows):
        try:
            parsed.append([float(cell) for cell in row])
        except ValueError:
            if index == 0:
                continue  # a header
            raise ValueError(f"{path}: row {index + 1} is not numeric: {row}") from None
    return parsed


@app.command()
def workers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The live training workers: queues, device, running jobs."""
    with _errors_to_exit():
        found = _state(ctx).client().workers()
    if as_json:
        _print_json(found)
        return
    table = Table()
    for column in ("name", "queues", "device", "running", "last seen"):
        table.add_column(column)
    for w in found:
        table.add_row(w.name, ",".join(w.queues), w.device, f"{w.running_jobs}/{w.concurrency}", _fmt_time(w.last_seen_at))
    out.print(table)
    if not found:
        out.print("no live worker: queued jobs wait until one starts (`trainserve-server worker`)")


@app.command()
def predict(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    inputs: Annotated[Path, typer.Option("--inputs", "-i", help="JSON rows or CSV rows of features.")],
    checkpoint: Annotated[str, typer.Option(help="best, latest or a checkpoint id.")] = "best",
    as_json: JsonOpt = False,
) -> None:
    """Predict with a trained job."""
    with _errors_to_exit():
        rows = read_inputs(inputs)
        result = _state(ctx).client().predict(job_id, rows, checkpoint=checkpoint)
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"job {result.job_id} · checkpoint {result.checkpoint_id}")
    table.add_column("row", justify="right")
    table.add_column("prediction")
    if result.probabilities is not None:
        table.add_column("probability", justify="right")
    for index, prediction in enumerate(result.predictions):
        cells = [str(index), json.dumps(prediction)]
        if result.probabilities is not None:
            cells.append(f"{max(result.probabilities[index]):.3f}")
        table.add_row(*cells)
    out.print(table)


# --- datasets -----------------------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or NPZ file.")],
    target: Annotated[list[str], typer.Option("--target", "-t", help="Target column(s) (repeat or comma-separate).")],
    name: Annotated[str | None, typer.Option(help="Name to store it under (default: the file name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a dataset and print its id and columns."""
    with _errors_to_exit():
        dataset = _state(ctx).client().datasets.upload(file, target=_split(target) or [], name=name)
    if as_json:
        _print_json(dataset)
        return
    out.print(f"dataset {dataset.id} · {dataset.name} · {dataset.n_rows} rows · target {', '.join(dataset.target)}")
    table = Table()
    for column in ("column", "dtype", "unique"):
        table.add_column(column)
    for col in dataset.columns:
        table.add_row(col.name, col.dtype or "-", str(col.n_unique) if col.n_unique is not None else "-")
    out.print(table)


@datasets_app.command("list")
def datasets_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every dataset of this tenant."""
    with _errors_to_exit():
        datasets = list(_state(ctx).client().datasets.list())
    if as_json:
        _print_json(datasets)
        return
    table = Table()
    _id_column(table, [d.id for d in datasets])
    for column in ("name", "format", "rows", "target", "created"):
        table.add_column(column)
    for d in datasets:
        table.add_row(d.id, d.name or "-", d.format or "-", str(d.n_rows), ", ".join(d.target), _fmt_time(d.created_at))
    out.print(table)


@datasets_app.command("show")
def datasets_show(ctx: typer.Context, dataset_id: Annotated[str, typer.Argument(metavar="DATASET")]) -> None:
    """One dataset as JSON."""
    with _errors_to_exit():
        _print_json(_state(ctx).client().datasets.get(dataset_id))


# --- checkpoints --------------------------------------------------------------------------------------


@checkpoints_app.command("list")
def checkpoints_list(ctx: typer.Context, job_id: Annotated[str, typer.Argument(metavar="JOB")], as_json: JsonOpt = False) -> None:
    """A job's checkpoints."""
    with _errors_to_exit():
        items = _state(ctx).client().jobs.checkpoints(job_id)
    if as_json:
        _print_json(items)
        return
    table = Table()
    _id_column(table, [c.id for c in items])
    for column in ("step", "epoch", "metric", "value", "size", "best", "latest"):
        table.add_column(column)
    for c in items:
        table.add_row(c.id, str(c.step), str(c.epoch), c.metric or "-", f"{c.value:.6g}" if c.value is not None else "-",
                      str(c.size_bytes), "✓" if c.is_best else "", "✓" if c.is_latest else "")
    out.print(table)


@checkpoints_app.command("download")
def checkpoints_download(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    checkpoint: Annotated[str, typer.Argument(metavar="[CKPT]", help="best, latest or an id.")] = "best",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write.")] = None,
) -> None:
    """Download a checkpoint's weights as .safetensors."""
    with _errors_to_exit():
        path = _state(ctx).client().jobs.download(job_id, checkpoint, output)
    out.print(f"wrote {path} ({path.stat().st_size:,} bytes)")


# The registry's commands live in their own module, which adds them to `app` (imported last: it uses this one).
from trainserve import cli_models  # noqa: E402, F401
from trainserve import cli_sweeps  # noqa: E402, F401  (sweep, sweeps, compare)


def main() -> None:
    """Console-script entry point."""
    app()
