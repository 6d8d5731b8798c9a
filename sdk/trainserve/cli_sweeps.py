"""``trainserve sweep``, ``trainserve sweeps list|show|cancel|delete`` and ``trainserve compare``: searches and runs
side by side from the command line.

Registered on ``trainserve.cli``'s app when that module loads (it imports this one last).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.markup import escape
from rich.table import Table

from trainserve.cli import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    JsonOpt,
    _errors_to_exit,
    _fmt_time,
    _id_column,
    _print_json,
    _state,
    app,
    err,
    out,
)
from trainserve.models import Comparison, Sweep

sweeps_app = typer.Typer(help="List, show, cancel and delete sweeps.", no_args_is_help=True)
app.add_typer(sweeps_app, name="sweeps")

SweepArg = Annotated[str, typer.Argument(metavar="SWEEP")]


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (dict, list, bool)) else str(value)


def _sweep_summary(sweep: Sweep) -> str:
    metric = sweep.objective.get("metric", "objective")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(sweep.counts.items())) or "no trials yet"
    parts = [f"sweep {sweep.id} {sweep.status}", f"{len(sweep.trials)}/{sweep.trials_total} trials ({counts})"]
    if sweep.best is not None:
        params = ", ".join(f"{k}={_value(v)}" for k, v in sweep.best.params.items())
        parts.append(f"best {metric}={sweep.best.value:.6g} (job {sweep.best.job_id}: {params})")
    return " · ".join(parts)


def _trials_table(sweep: Sweep) -> Table:
    """Trials best first (by the objective, in its direction), then those without a value by number."""
    keys = list(sweep.space)
    table = Table(title=escape(_sweep_summary(sweep)))
    table.add_column("#", justify="right")
    _id_column(table, [t.job_id for t in sweep.trials])
    table.add_column("status")
    table.add_column(sweep.objective.get("metric", "objective"), justify="right")
    table.add_column("epochs", justify="right")
    for key in keys:
        table.add_column(escape(key))
    sign = -1.0 if sweep.objective.get("mode") == "max" else 1.0
    ordered = sorted(sweep.trials, key=lambda t: (t.value is None, sign * (t.value or 0.0), t.number))
    for t in ordered:
        table.add_row(str(t.number), t.job_id, t.status, _value(t.value), str(t.epochs),
                      *(_value(t.params.get(key)) for key in keys))
    return table


@app.command()
def sweep(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="A JSON spec file: the base of every trial.")],
    space: Annotated[Path, typer.Option("--space", help="A JSON file: spec path -> distribution.")],
    method: Annotated[str, typer.Option(help="random, grid or tpe.")] = "random",
    trials: Annotated[int, typer.Option(help="Trials to run (grid: at most every combination).")] = 10,
    parallel: Annotated[int, typer.Option(help="Trials running at once.")] = 1,
    seed: Annotated[int, typer.Option(help="The same seed proposes the same trials.")] = 0,
    objective: Annotated[str, typer.Option(help="The metric to optimize, e.g. val_loss or val_accuracy.")] = "val_loss",
    mode: Annotated[str, typer.Option(help="min or max.")] = "min",
    pruner: Annotated[str, typer.Option(help="none, median or asha (stops poor trials at epoch ends).")] = "none",
    name: Annotated[str | None, typer.Option(help="The sweep's name (default: the spec's).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Wait for the sweep, with a bar over its trials.")] = False,
    poll_interval: Annotated[float, typer.Option(help="Seconds between status polls with --follow.")] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Start a sweep; with --follow, wait and exit 0 if it succeeded, 1 if it failed or was cancelled."""
    with _errors_to_exit():
        client = _state(ctx).client()
        # The server checks method, mode and pruner, and answers a bad one 422 at its loc (exit 2).
        created = client.sweeps.create(
            spec, space, method=cast(Any, method), trials=trials, parallel=parallel, seed=seed,
            objective=objective, mode=cast(Any, mode), pruner=cast(Any, pruner), name=name,
        )
        if not follow:
            if as_json:
                _print_json(created)
            else:
                out.print(f"started sweep {created.id} ({created.trials_total} trials, {len(created.trials)} submitted)")
            return
        err.print(f"started sweep {created.id}")
        done = client.sweeps.wait(created.id, progress=True, poll_interval=poll_interval)
    if as_json:
        _print_json(done)
    else:
        out.print(_trials_table(done))
    raise typer.Exit(EXIT_OK if done.status == "succeeded" else EXIT_JOB_FAILED)


@sweeps_app.command("list")
def sweeps_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Show at most this many sweeps (0: all).")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Sweeps, newest first."""
    with _errors_to_exit():
        items = list(_state(ctx).client().sweeps.list(max_items=limit or None))
    if as_json:
        _print_json(items)
        return
    table = Table()
    _id_column(table, [s.id for s in items])
    for column in ("name", "status", "trials", "objective", "best", "created"):
        table.add_column(column)
    for s in items:
        best = f"{s.best.value:.6g}" if s.best is not None else "-"
        goal = f"{s.objective.get('metric')} ({s.objective.get('mode')})"
        table.add_row(s.id, s.name or "-", s.status, f"{len(s.trials)}/{s.trials_total}", goal, best,
                      _fmt_time(s.created_at))
    out.print(table)


@sweeps_app.command("show")
def sweeps_show(ctx: typer.Context, sweep_id: SweepArg, as_json: JsonOpt = False) -> None:
    """One sweep: its status and best trial, and every trial best first with its params."""
    with _errors_to_exit():
        found = _state(ctx).client().sweeps.get(sweep_id)
    if as_json:
        _print_json(found)
        return
    out.print(_trials_table(found))


@sweeps_app.command("cancel")
def sweeps_cancel(ctx: typer.Context, sweep_id: SweepArg, as_json: JsonOpt = False) -> None:
    """Cancel a running sweep: queued trials never start, running ones stop (exit 1 if it already finished)."""
    with _errors_to_exit():
        found = _state(ctx).client().sweeps.cancel(sweep_id)
    if as_json:
        _print_json(found)
    else:
        out.print(f"sweep {found.id} {found.status}")


@sweeps_app.command("delete")
def sweeps_delete(ctx: typer.Context, sweep_id: SweepArg, as_json: JsonOpt = False) -> None:
    """Delete a finished sweep and its trials' jobs (exit 1 while it runs)."""
    with _errors_to_exit():
        _state(ctx).client().sweeps.delete(sweep_id)
    if as_json:
        _print_json({"id": sweep_id, "deleted": True})
    else:
        out.print(f"deleted sweep {sweep_id}")


def comparison_table(result: Comparison) -> Table:
    """A column per job: its name, status and best value, then each spec path whose values differ."""
    table = Table()
    table.add_column("", style="bold")
    for job in result.jobs:
        table.add_column(job.id, no_wrap=True)
    table.add_row("name", *(escape(job.name or "-") for job in result.jobs))
    table.add_row("status", *(job.status for job in result.jobs))
    table.add_row("best", *(f"{job.best.metric}={job.best.value:.6g}" if job.best and job.best.value is not None
                            else "-" for job in result.jobs))
    for path, values in result.spec_diff.items():
        if path != "name":
            table.add_row(escape(path), *(escape(_value(v)) for v in values))
    return table


@app.command()
def compare(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(metavar="JOB...", help="Two or more job ids.")],
    names: Annotated[list[str] | None, typer.Option("--names", help="Series to include with --json.")] = None,
    max_points: Annotated[int, typer.Option(help="Points per series with --json.")] = 500,
    as_json: JsonOpt = False,
) -> None:
    """Jobs side by side: the spec paths whose values differ, and each job's best value."""
    with _errors_to_exit():
        result = _state(ctx).client().jobs.compare(job_ids, names=names, max_points=max_points)
    if as_json:
        _print_json(result)
        return
    out.print(comparison_table(result))
    if not [p for p in result.spec_diff if p != "name"]:
        out.print("the specs are the same (but for their names)")
