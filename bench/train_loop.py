"""Training-loop benchmark: samples/s of ``worker.engine.fit()`` against hand-written loops and Lightning.

Owns the contenders, the workloads and the one Markdown table (plus ``bench/results/train_loop.json``)
that back the product's claim "the worker's loop trains at least as fast as the best loop a performance
engineer writes by hand". Run ``python -m bench.train_loop`` from the repository root (``--quick`` for a
smoke run). A benchmark, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench._report import fmt_rounds

log = logging.getLogger(__name__)

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "train_loop.json"
LR = 1e-3
BARE_EVERY = 10**9  # a log / checkpoint interval no benchmark run reaches

# A contender trains a fresh copy of the model on the case's data and returns the seconds it took.
Contender = Callable[["Case", nn.Module, torch.Tensor, torch.Tensor], float]


# --- workloads ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    widths: tuple[int, ...]  # input features, hidden widths..., outputs
    n_classes: int | None  # None: regression on one float target (MSELoss), else CrossEntropyLoss

    @property
    def n_features(self) -> int:
        return self.widths[0]

    def layers(self) -> list[dict[str, Any]]:
        """The spec's layer stack: Linear layers with a ReLU between each pair."""
        out: list[dict[str, Any]] = []
        for i, (w_in, w_out) in enumerate(zip(self.widths, self.widths[1:])):
            if i:
                out.append({"type": "ReLU"})
            out.append({"type": "Linear", "in_features": w_in, "out_features": w_out})
        return out

    def build(self) -> nn.Sequential:
        """The same stack as a hand-written ``nn.Sequential`` (same module order, so same init under a seed)."""
        mods: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(self.widths, self.widths[1:])):
            if i:
                mods.append(nn.ReLU())
            mods.append(nn.Linear(w_in, w_out))
        return nn.Sequential(*mods)

    def criterion(self) -> nn.Module:
        return nn.MSELoss() if self.n_classes is None else nn.CrossEntropyLoss()

    def make_data(self, n_rows: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n_rows, self.n_features, generator=gen)
        if self.n_classes is None:
            y = torch.randn(n_rows, 1, generator=gen)
        else:
            y = torch.randint(0, self.n_classes, (n_rows,), generator=gen)
        return x, y


SEED_MLP = Workload("seed MLP 32-64-32-1", (32, 64, 32, 1), None)
CLASSIFIER = Workload("MLP 784-512-256-10", (784, 512, 256, 10), 10)


@dataclass(frozen=True)
class Case:
    workload: Workload
    batch_size: int
    n_rows: int
    epochs: int
    # Every contender runs the same optimizer kernel: PyTorch's default Adam, or Adam(fused=True) (the spec's opt-in).
    fused: bool = False

    @property
    def samples(self) -> int:
        return self.n_rows * self.epochs

    @property
    def kernel(self) -> dict[str, Any]:
        return {"fused": True} if self.fused else {}

    @property
    def label(self) -> str:
        return f"{self.workload.name} ({'fused' if self.fused else 'default'} Adam)"


def make_cases(quick: bool) -> list[Case]:
    """Each size with PyTorch's default Adam and with fused Adam."""
    return [dataclasses.replace(case, fused=fused) for case in _sizes(quick) for fused in (False, True)]


def _sizes(quick: bool) -> list[Case]:
    """Sizes chosen so each measured run lasts roughly 0.3-1 s on 2 cores (about 0.1-0.3 s with --quick)."""
    if quick:
        return [
            Case(SEED_MLP, 32, 4096, 3),
            Case(SEED_MLP, 256, 4096, 16),
            Case(CLASSIFIER, 32, 2048, 1),
            Case(CLASSIFIER, 256, 4096, 1),
        ]
    return [
        Case(SEED_MLP, 32, 8192, 6),
        Case(SEED_MLP, 256, 8192, 30),
        Case(CLASSIFIER, 32, 8192, 1),
        Case(CLASSIFIER, 256, 8192, 2),
    ]


# --- threads ------------------------------------------------------------------------------------------

DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run a contender under ``n`` intra-op threads and put the process default back afterwards."""
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(DEFAULT_THREADS)


# --- (a) the seed article's loop ----------------------------------------------------------------------


def run_seed_style(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The seed article's step, mini-batched over pre-loaded tensors, with its ``loss.item()`` every step."""
    t0 = time.perf_counter()
    crit = case.workload.criterion()
    opt = torch.optim.Adam(model.parameters(), lr=LR, **case.kernel)
    n, bs = case.n_rows, case.batch_size
    for _ in range(case.epochs):
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb, yb = x[idx], y[idx]
            pred = model(xb)
            loss = crit(pred, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
    return time.perf_counter() - t0


# --- (b) the best hand-written loop -------------------------------------------------------------------


def run_hand_tuned(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """What a performance engineer writes: one gather per epoch then views, no per-step sync (the case's Adam)."""
    t0 = time.perf_counter()
    crit = case.workload.criterion()
    opt = torch.optim.Adam(model.parameters(), lr=LR, **case.kernel)
    n, bs = case.n_rows, case.batch_size
    full_batch = bs >= n
    for _ in range(case.epochs):
        if full_batch:
            # One batch is the whole set: its order does not change the mean loss, so skip the gather.
            xs, ys = x, y
        else:
            perm = torch.randperm(n)
            xs, ys = x[perm], y[perm]
        for i in range(0, n, bs):
            loss = crit(model(xs[i : i + bs]), ys[i : i + bs])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


# --- (c) the tutorial DataLoader loop -----------------------------------------------------------------


def run_dataloader(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The loop most tutorials write: DataLoader(TensorDataset), a running loss via .item() (the case's Adam)."""
    from torch.utils.data import DataLoader, TensorDataset

    t0 = time.perf_counter()
    crit = case.workload.criterion()
    opt = torch.optim.Adam(model.parameters(), lr=LR, **case.kernel)
    loader = DataLoader(TensorDataset(x, y), batch_size=case.batch_size, shuffle=True)
    for _ in range(case.epochs):
        running_loss = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = crit(model(xb), yb)
            loss.backward()
            opt.step()
            running_loss += loss.item()
    return time.perf_counter() - t0


# --- (d) PyTorch Lightning ----------------------------------------------------------------------------


def _quiet_lightning() -> None:
    # Lightning logs its device banner at INFO and warns that a DataLoader with no workers may be slow.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")


def run_lightning(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Lightning's Trainer with its extras off, on a LightningModule that wraps the same model."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Wrapped(pl.LightningModule):
        def __init__(self, net: nn.Module, crit: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.crit = crit

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            xb, yb = batch
            loss: torch.Tensor = self.crit(self.net(xb), yb)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.net.parameters(), lr=LR, **case.kernel)

    class LoopTimer(pl.Callback):
        """Times the training loop alone: Trainer and strategy setup (tens of ms) are not the loop."""

        def __init__(self) -> None:
            self.start = self.end = 0.0

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.end = time.perf_counter()

    _quiet_lightning()
    timer = LoopTimer()
    module = Wrapped(model, case.workload.criterion())
    loader = DataLoader(TensorDataset(x, y), batch_size=case.batch_size, shuffle=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=case.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start


# --- fit() --------------------------------------------------------------------------------------------


@dataclass
class FitAdapter:
    """Calls ``worker.engine.fit`` the way the worker task does: real callbacks collecting into lists."""

    fit: Callable[..., Any]
    build_model: Callable[..., nn.Module] | None
    points: list[Any] = field(default_factory=list)
    checkpoints: list[Any] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # what the latest run reported

    def spec(self, case: Case, *, log_every_steps: int | None, bare: bool = False,
             cpu_threads: int | None = None) -> Any:
        from service.spec import JobSpec

        wl = case.workload
        data: dict[str, Any] = {"source": "synthetic", "n_samples": case.n_rows, "n_features": wl.n_features}
        if wl.n_classes is None:
            data.update(kind="randn", n_targets=1)
        else:
            data.update(kind="classification", n_classes=wl.n_classes)
        training: dict[str, Any] = {"epochs": case.epochs, "batch_size": case.batch_size, "seed": 0, "device": "cpu"}
        if log_every_steps is not None:
            training["log_every_steps"] = log_every_steps
        if cpu_threads is not None:
            training["cpu_threads"] = cpu_threads
        if bare:
            # No step points and only the final checkpoint: the floor that logging and checkpointing add to.
            training["log_every_steps"] = BARE_EVERY
            training["checkpoint"] = {"every_epochs": BARE_EVERY}
        return JobSpec.model_validate(
            {
                "name": f"bench-{wl.name}-{case.batch_size}",
                "model": {"layers": wl.layers()},
                "loss": {"type": "MSELoss" if wl.n_classes is None else "CrossEntropyLoss"},
                "optimizer": {"type": "Adam", "lr": LR, **case.kernel},
                "training": training,
                "data": data,
            }
        )

    def model_for(self, case: Case, template: nn.Module) -> nn.Module:
        """The product's own model for the spec, loaded with the template's weights (same init as everyone)."""
        if self.build_model is None:
            return copy.deepcopy(template)
        try:
            model = self.build_model(self.spec(case, log_every_steps=None), (case.workload.n_features,))
            model.load_state_dict(template.state_dict())
            return model
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # keys unlike nn.Sequential's: still run fit()
            log.warning("build_model unusable (%s); fit() gets a copy of the hand-built model", exc)
            self.build_model = None
            return copy.deepcopy(template)

    def contender(self, *, log_every_steps: int | None, bare: bool = False,
                  cpu_threads: int | None = None) -> Contender:
        def run(case: Case, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
            from worker.data import TrainData

            spec = self.spec(case, log_every_steps=log_every_steps, bare=bare, cpu_threads=cpu_threads)
            wl = case.workload
            data = TrainData(
                x_train=x,
                y_train=y,
                x_val=None,
                y_val=None,
                task="regression" if wl.n_classes is None else "classification",
                classes=None if wl.n_classes is None else [str(i) for i in range(wl.n_classes)],
            )
            self.points.clear()
            self.checkpoints.clear()
            self.progress.clear()
            callbacks: dict[str, Any] = {
                "on_points": self.points.extend,
                "on_checkpoint": self.checkpoints.append,
                "on_progress": self.progress.append,
                "should_stop": lambda: False,
            }
            # Pass every callback the worker task passes, as far as this engine's fit() takes it.
            accepted = inspect.signature(self.fit).parameters
            kwargs = {k: v for k, v in callbacks.items() if k in accepted}
            t0 = time.perf_counter()
            self.fit(model, spec, data, device="cpu", **kwargs)
            secs = time.perf_counter() - t0
            self.counts = {
                "train_loss_points": sum(getattr(p, "name", None) == "train_loss" for p in self.points),
                "checkpoints": len(self.checkpoints),
            }
            return secs

        return run


def load_fit() -> tuple[FitAdapter | None, str]:
    """The engine's fit() when it imports, else None and why."""
    try:
        engine = importlib.import_module("worker.engine")
    except (ImportError, SyntaxError) as exc:  # the engine is missing or broken: the table says so, no crash
        return None, f"worker.engine does not import: {exc!r}"
    fit = getattr(engine, "fit", None)
    if fit is None:
        return None, "worker.engine has no fit()"
    build_model: Callable[..., nn.Module] | None
    try:
        build_model = importlib.import_module("service.nets").build_model
    except (ImportError, AttributeError):
        build_model = None
    return FitAdapter(fit=fit, build_model=build_model), "ok"


# --- measuring ----------------------------------------------------------------------------------------

NAMES = {
    "fit": "fit()",
    "fit_log1": "fit() log_every_steps=1",
    "fit_bare": "fit() with no step points and only the final checkpoint",
    "fit_threads": "fit() with training.cpu_threads at the default thread count",
    "a": "(a) seed-style loop",
    "b": "(b) hand-tuned loop",
    "b_default": "(b) at the default thread count",
    "c": "(c) DataLoader loop",
    "d": "(d) Lightning Trainer",
}


@dataclass
class RowResult:
    case: Case
    threads: dict[str, int]
    seconds: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # fit()'s points and checkpoints per run
    errors: dict[str, str] = field(default_factory=dict)

    def sps(self, key: str) -> float | None:
        runs = self.seconds.get(key)
        if not runs or key in self.errors:
            return None
        return self.case.samples / statistics.median(runs)

    def rounds(self, key: str, peer: str) -> list[float] | None:
        """key's samples/s over peer's in each round (each round runs every contender once, back to back)."""
        mine, theirs = self.seconds.get(key), self.seconds.get(peer)
        if not mine or not theirs or len(mine) != len(theirs) or {key, peer} & set(self.errors):
            return None
        return [their / my for my, their in zip(mine, theirs, strict=True)]

    def fit_ratio(self, peer: str, key: str = "fit") -> float | None:
        """key's (fit()'s) ratio to peer: the median of the rounds' ratios (a slow spell of the machine moves both
        runs of a round, not one side of the ratio), else the ratio of the medians."""
        rounds = self.rounds(key, peer)
        return statistics.median(rounds) if rounds else _ratio(self.sps(key), self.sps(peer))


def _timed(run: Contender, case: Case, template: nn.Module, x: torch.Tensor, y: torch.Tensor, threads: int,
           fresh: Callable[[Case, nn.Module], nn.Module]) -> float:
    model = fresh(case, template)  # copying weights is setup, not training: outside the clock
    model.train()
    with num_threads(threads):
        return run(case, model, x, y)


def _deepcopy(case: Case, template: nn.Module) -> nn.Module:
    return copy.deepcopy(template)


def measure_case(
    case: Case, repeats: int, adapter: FitAdapter | None, fit_error: str, b_threads: int | None = None,
    only: set[str] | None = None,
) -> RowResult:
    torch.manual_seed(0)
    template = case.workload.build()
    x, y = case.workload.make_data(case.n_rows)
    contenders: dict[str, tuple[Contender, Callable[[Case, nn.Module], nn.Module]]] = {
        "a": (run_seed_style, _deepcopy),
        "b": (run_hand_tuned, _deepcopy),
        # (b) again without its thread tuning: separates what fit() loses to threads from what its loop costs.
        "b_default": (run_hand_tuned, _deepcopy),
        "c": (run_dataloader, _deepcopy),
        "d": (run_lightning, _deepcopy),
    }
    errors: dict[str, str] = {}
    if adapter is not None:
        contenders["fit"] = (adapter.contender(log_every_steps=None), adapter.model_for)
        contenders["fit_log1"] = (adapter.contender(log_every_steps=1), adapter.model_for)
        contenders["fit_bare"] = (adapter.contender(log_every_steps=None, bare=True), adapter.model_for)
        # fit() where the user names the thread count (b_default runs): its loop against (b)'s on the same count.
        contenders["fit_threads"] = (adapter.contender(log_every_steps=None, cpu_threads=DEFAULT_THREADS),
                                     adapter.model_for)
    else:
        errors["fit"] = errors["fit_log1"] = errors["fit_bare"] = errors["fit_threads"] = fit_error
    if only is not None:  # --only: the other columns stay empty ("missing")
        if "b" in only and b_threads is None:
            only = only | {"b_default"}  # (b) is the faster of its two thread counts: both run (see below)
        contenders = {key: value for key, value in contenders.items() if key in only}
    threads = {key: DEFAULT_THREADS for key in contenders}
    threads["b"] = b_threads or 1  # and b_default runs at the default count: (b) is the faster (see below)
    row = RowResult(case=case, threads=threads, errors=errors)
    keys = list(contenders)
    # Warm-up (first run pays allocator growth, lazy imports, Lightning's first setup) and then interleaved
    # repeats in rotating order, so drift in the machine's speed hits every contender alike.
    for rep in range(-1, repeats):
        shift = max(rep, 0) % len(keys)
        for key in keys[shift:] + keys[:shift]:
            if key in row.errors:
                continue
            run, fresh = contenders[key]
            try:
                secs = _timed(run, case, template, x, y, threads[key], fresh)
            except Exception as exc:  # one broken contender must not sink the whole table
                log.exception("%s failed on %s batch %d", key, case.workload.name, case.batch_size)
                row.errors[key] = f"{type(exc).__name__}: {exc}"
                continue
            if rep >= 0:
                row.seconds.setdefault(key, []).append(secs)
            if adapter is not None and key.startswith("fit"):
                row.counts[key] = dict(adapter.counts)
        log.info("%s batch %d: repeat %d done", case.workload.name, case.batch_size, rep)
    # (b) is the faster of one thread and the default count, judged over all the repeats (a trial run beforehand
    # let one slow spell of the machine pick the slower count).
    one, default = row.seconds.get("b"), row.seconds.get("b_default")
    if b_threads is None and one and default and statistics.median(default) < statistics.median(one):
        row.seconds["b_one_thread"] = one  # kept in the JSON: fit()'s loop against (b) on the same thread count
        row.seconds["b"], row.threads["b"] = list(default), DEFAULT_THREADS
    return row


# --- reporting ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def header(repeats: int, quick: bool, load: tuple[list[float] | None, list[float] | None]) -> str:
    # The load average is printed because other processes on a 2-core box change every figure, and most of
    # all those of contenders that run 2 OpenMP threads.
    return (
        f"torch {torch.__version__} | default threads {DEFAULT_THREADS} (interop {torch.get_num_interop_threads()})"
        f" | {os.cpu_count()} logical CPUs | CPU: {cpu_model()} | Python {platform.python_version()}"
        f" | samples/s: median of {repeats} interleaved repeats{' (--quick)' if quick else ''}; fit/(x): median of"
        " the rounds' ratios (quartiles)"
        f" | load average 1/5/15 min at start {load[0]}, at end {load[1]}"
    )


def _fmt_sps(value: float | None) -> str:
    return "missing" if value is None else f"{value:,.0f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _fmt_fit_ratio(row: RowResult, peer: str, key: str = "fit") -> str:
    """key's (fit()'s) ratio to peer, with the rounds' quartiles when there are rounds."""
    rounds = row.rounds(key, peer)
    return fmt_rounds(rounds) if rounds else _fmt_ratio(row.fit_ratio(peer, key))


def _fmt_cost(fast: float | None, slow: float | None) -> str:
    """Extra time of the slower variant as a share of the faster one's, from their samples/s."""
    ratio = _ratio(fast, slow)
    return "–" if ratio is None else f"{(ratio - 1) * 100:+.1f}%"


def markdown_table(rows: list[RowResult]) -> str:
    cols = [
        "workload", "batch", "samples/run", "fit()", "(a) seed", "(b) tuned", "(c) DataLoader", "(d) Lightning",
        "fit/(a)", "fit/(b)", "fit/(c)", "fit/(d)",
        "fit log_every=1", "logging cost", "fit bare", "logging+ckpt cost", "fit points/ckpts",
        "(b) threads", "(b) default threads", "fit/(b) default threads", "fit cpu_threads=default",
        "fit cpu_threads=default/(b) default threads",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(cols))) + "|"]
    for row in rows:
        fit = row.sps("fit")
        counts = row.counts.get("fit")
        cells = [
            row.case.label,
            str(row.case.batch_size),
            f"{row.case.samples:,}",
            _fmt_sps(fit),
            *(_fmt_sps(row.sps(k)) for k in ("a", "b", "c", "d")),
            *(_fmt_fit_ratio(row, k) for k in ("a", "b", "c", "d")),
            _fmt_sps(row.sps("fit_log1")),
            _fmt_cost(fit, row.sps("fit_log1")),
            _fmt_sps(row.sps("fit_bare")),
            _fmt_cost(row.sps("fit_bare"), fit),
            "–" if counts is None else f"{counts['train_loss_points']}/{counts['checkpoints']}",
            str(row.threads["b"]),
            _fmt_sps(row.sps("b_default")),
            _fmt_fit_ratio(row, "b_default"),
            _fmt_sps(row.sps("fit_threads")),
            _fmt_fit_ratio(row, "b_default", key="fit_threads"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_json(
    rows: list[RowResult], repeats: int, quick: bool, load: tuple[list[float] | None, list[float] | None]
) -> dict[str, Any]:
    return {
        "load_average_start": load[0],
        "load_average_end": load[1],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "default_threads": DEFAULT_THREADS,
        "repeats": repeats,
        "quick": quick,
        "contenders": NAMES,
        "rows": [
            {
                "workload": row.case.workload.name,
                "fused": row.case.fused,
                "batch_size": row.case.batch_size,
                "n_rows": row.case.n_rows,
                "epochs": row.case.epochs,
                "samples_per_run": row.case.samples,
                "threads": row.threads,
                "samples_per_s": {key: row.sps(key) for key in NAMES},
                "fit_ratio": {key: row.fit_ratio(key) for key in ("a", "b", "b_default", "c", "d")},
                "fit_ratio_rounds": {key: row.rounds("fit", key) for key in ("a", "b", "b_default", "c", "d")},
                "fit_threads_ratio_b_default": row.fit_ratio("b_default", "fit_threads"),
                "seconds": row.seconds,
                "fit_reports": row.counts,
                "errors": row.errors,
            }
            for row in rows
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs and 2 repeats: a ~1 minute smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats per row (default 5, quick 2)")
    parser.add_argument("--out", type=Path, default=RESULTS_PATH, help="where to write the JSON results")
    parser.add_argument(
        "--b-threads", type=int, default=None,
        help="fix (b)'s thread count instead of taking the faster of 1 and the default",
    )
    parser.add_argument(
        "--only", default=None,
        help="comma-separated contenders to run, e.g. fit,b for the goal's ratio alone with more repeats in the same "
             f"time (keys: {', '.join(NAMES)})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    only = None if args.only is None else set(args.only.split(","))
    if only is not None and not only <= set(NAMES):
        parser.error(f"--only takes {', '.join(NAMES)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    repeats = args.repeats or (2 if args.quick else 5)

    adapter, fit_error = load_fit()
    if adapter is None:
        log.warning("fit() rows are marked missing: %s", fit_error)
    started = time.perf_counter()
    load_start = load_average()
    rows = [measure_case(case, repeats, adapter, fit_error, args.b_threads, only) for case in make_cases(args.quick)]
    load = (load_start, load_average())

    print(header(repeats, args.quick, load))
    print()
    print(markdown_table(rows))
    for row in rows:
        for key, err in row.errors.items():
            print(f"\n{NAMES[key]} on {row.case.workload.name} batch {row.case.batch_size}: {err}")
    print(f"\n(total {time.perf_counter() - started:.0f} s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results_json(rows, repeats, args.quick, load), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
