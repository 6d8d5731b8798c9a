"""``trainserve models list|show|register|alias`` and ``trainserve export``: the registry from the command line.

Registered on ``trainserve.cli``'s app when that module loads (it imports this one last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from trainserve.cli import JsonOpt, _errors_to_exit, _fmt_time, _print_json, _state, app, out
from trainserve.models import ModelVersion

models_app = typer.Typer(help="The model registry: versions pin checkpoints, aliases move.", no_args_is_help=True)
app.add_typer(models_app, name="models")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The model's name.")]


def _version_line(v: ModelVersion) -> str:
    aliases = f" ({', '.join(v.aliases)})" if v.aliases else ""
    return f"{v.model}:{v.version}{aliases} = job {v.job_id} checkpoint {v.checkpoint_id}"


@models_app.command("list")
def models_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every model, newest first, with its latest version and aliases."""
    with _errors_to_exit():
        items = list(_state(ctx).client().models.list())
    if as_json:
        _print_json(items)
        return
    table = Table()
    for column in ("name", "latest", "aliases", "created"):
        table.add_column(column)
    for m in items:
        aliases = ", ".join(f"{a}→{v}" for a, v in m.aliases.items())
        table.add_row(m.name, str(m.latest_version or "-"), aliases or "-", _fmt_time(m.created_at))
    out.print(table)


@models_app.command("show")
def models_show(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """A model's versions (newest first), what each pins, its aliases and signature."""
    with _errors_to_exit():
        model = _state(ctx).client().models.get(name)
    if as_json:
        _print_json(model)
        return
    table = Table(title=f"model {model.name}")
    for column in ("version", "aliases", "job", "checkpoint", "inputs", "outputs", "created"):
        table.add_column(column)
    for v in model.versions:
        sig = v.signature
        inputs = "-" if sig is None else f"{sig.inputs.shape}" + (" named" if sig.inputs.features else "")
        outputs = "-" if sig is None else (f"classes {sig.outputs.classes}" if sig.outputs.kind == "classes"
                                            else f"values {sig.outputs.targets or ''}")
        table.add_row(str(v.version), ", ".join(v.aliases) or "-", v.job_id, v.checkpoint_id, inputs, outputs,
                      _fmt_time(v.created_at))
    out.print(table)


@models_app.command("register")
def models_register(
    ctx: typer.Context,
    name: NameArg,
    job_id: Annotated[str, typer.Option("--job", metavar="JOB", help="The job whose checkpoint to register.")],
    checkpoint: Annotated[str, typer.Option(help="best, latest or a checkpoint id (pinned now).")] = "best",
    as_json: JsonOpt = False,
) -> None:
    """Register a job's checkpoint as the model's next version."""
    with _errors_to_exit():
        version = _state(ctx).client().models.register(name, job_id, checkpoint=checkpoint)
    if as_json:
        _print_json(version)
        return
    out.print(f"registered {_version_line(version)}")


@models_app.command("alias")
def models_alias(
    ctx: typer.Context,
    name: NameArg,
    alias: Annotated[str, typer.Argument(metavar="ALIAS", help="e.g. prod")],
    version: Annotated[int, typer.Argument(metavar="VERSION", min=1)],
    as_json: JsonOpt = False,
) -> None:
    """Point an alias at a version (creating or moving it)."""
    with _errors_to_exit():
        result = _state(ctx).client().models.set_alias(name, alias, version)
    if as_json:
        _print_json(result)
        return
    out.print(f"{name}@{result.alias} → version {result.version}")


@app.command("export")
def export(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write, e.g. model.onnx.")],
    format: Annotated[Literal["onnx", "pt2"], typer.Option("--format", help="onnx or pt2 (torch.export).")] = "onnx",
    checkpoint: Annotated[str, typer.Option(help="best, latest or a checkpoint id.")] = "best",
) -> None:
    """Save a job's checkpoint as one file that runs without trainserve (normalization, network, probabilities)."""
    with _errors_to_exit():
        path = _state(ctx).client().jobs.export(job_id, checkpoint=checkpoint, format=format, path=output)
    out.print(f"wrote {path} ({path.stat().st_size:,} bytes)")
