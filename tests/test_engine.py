"""The training engine: same numbers as a hand-written loop, exact resume, every loss/optimizer/scheduler,
early stopping, cancellation, divergence, logging cadence, checkpoint files, and real learning."""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker
from torch import nn

from service.seed_reference import hand_written_losses, seed_net
from service.checkpoints import load_resume_state, record_checkpoint
from service.db import make_engine
from service.migrate import migrate_to_head
from service.models import Checkpoint, Job
from service.nets import build_model
from service.settings import Settings
from service.spec import SEED_EXAMPLE, JobSpec
from worker.data import TrainData, load_data
from worker.engine import loop as engine_loop
from worker.engine import points as engine_points
from worker.engine import (
    CheckpointBlob,
    FitResult,
    Point,
    Progress,
    TrainingDiverged,
    build_optimizer,
    fit,
    load_weights,
)

# --- helpers --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    # Tiny models: a second OpenMP thread only adds contention on a busy 2-core runner.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_spec(**sections: Any) -> JobSpec:
    """A small regression spec; keyword arguments replace whole sections, ``training`` is merged."""
    raw: dict[str, Any] = {
        "model": {"layers": [{"type": "Linear", "in_features": 4, "out_features": 8}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 1}]},
        "loss": {"type": "MSELoss"},
        "optimizer": {"type": "Adam", "lr": 0.01},
        "training": {"epochs": 2, "batch_size": 8, "seed": 0, "log_every_steps": 1},
        "data": {"source": "synthetic", "kind": "regression", "n_samples": 32, "n_features": 4},
    }
    training = {**raw["training"], **sections.pop("training", {})}
    raw.update(sections, training=training)
    return JobSpec.model_validate(raw)


def regression_data(n: int = 32, features: int = 4, *, n_val: int = 0, seed: int = 1) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, features, generator=g)
    y = x @ torch.randn(features, 1, generator=g) + 0.1 * torch.randn(n + n_val, 1, generator=g)
    return TrainData(x_train=x[:n], y_train=y[:n], x_val=x[n:] if n_val else None, y_val=y[n:] if n_val else None,
                     task="regression")


def mlp(seed: int, *sizes: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def frozen_clock() -> float:
    """A clock that never moves: only counts and epoch ends trigger reports and checkpoints, however slow the host."""
    return 0.0


class Recorder:
    def __init__(self) -> None:
        self.points: list[Point] = []
        self.checkpoints: list[CheckpointBlob] = []

    def run(self, model: nn.Module, spec: JobSpec, data: TrainData, **kwargs: Any) -> FitResult:
        kwargs.setdefault("clock", frozen_clock)
        return fit(model, spec, data, on_points=self.points.extend, on_checkpoint=self.checkpoints.append, **kwargs)

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(p.step, p.value) for p in self.points if p.name == name]


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --- the seed article's example -------------------------------------------------------------------------


def seed_spec(features: int = 32, rows: int = 128, outputs: int = 1, **optimizer: Any) -> JobSpec:
    """The seed article's example as a spec, for ``rows`` x ``features`` data (one full batch, as the article)."""
    raw = copy.deepcopy(SEED_EXAMPLE)
    raw["model"]["layers"][0]["in_features"] = features
    raw["model"]["layers"][-1]["out_features"] = outputs
    raw["optimizer"].update(optimizer)
    raw["training"]["batch_size"] = rows
    return JobSpec.model_validate(raw)


# (data seed, rows, features, outputs): the article's shape first, then others, none of them chosen to pass.
SEED_DATA = [(7, 128, 32, 1), (0, 128, 32, 1), (123, 128, 32, 1), (2024, 64, 32, 1), (5, 200, 16, 1),
             (99, 50, 8, 3), (31337, 300, 32, 1)]


@pytest.mark.parametrize(("data_seed", "rows", "features", "outputs"), SEED_DATA)
def test_seed_example_gives_the_hand_written_losses_bit_for_bit(data_seed: int, rows: int, features: int,
                                                                 outputs: int) -> None:
    # With foreach/fused unset, fit() runs PyTorch's default Adam on the same ops in the same order as the
    # article's loop, so every loss is the same float: equality, not a tolerance that holds on lucky data.
    spec = seed_spec(features, rows, outputs)
    assert spec.training.shuffle and spec.training.batch_size == rows  # one shuffled batch covering every row
    g = torch.Generator().manual_seed(data_seed)
    x, y = torch.randn(rows, features, generator=g), torch.randn(rows, outputs, generator=g)
    expected, reference = hand_written_losses(x, y)

    model = seed_net(features, outputs)
    rec = Recorder()
    result = rec.run(model, spec, TrainData(x, y, None, None, task="regression"))

    assert rec.series("train_loss") == list(enumerate(expected, start=1))
    assert result == FitResult("succeeded", 100, 100, result.final_metrics)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_seed_spec_through_build_model_and_load_data_matches_the_script() -> None:
    spec = JobSpec.model_validate(SEED_EXAMPLE)
    data = load_data(spec)
    expected, _ = hand_written_losses(data.x_train, data.y_train)
    torch.manual_seed(0)
    rec = Recorder()
    rec.run(build_model(spec, (32,)), spec, data)
    assert [v for _, v in rec.series("train_loss")] == expected


def test_fused_is_an_opt_in_that_still_trains_the_seed_example() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 32, generator=g), torch.randn(128, 1, generator=g)
    expected, _ = hand_written_losses(x, y)
    rec = Recorder()
    rec.run(seed_net(), seed_spec(fused=True), TrainData(x, y, None, None, task="regression"))
    got = [v for _, v in rec.series("train_loss")]
    # A different kernel (not bit-identical by design), the same optimizer: the first step has no update yet,
    # and the run descends the same way.
    assert got[0] == expected[0] and all(math.isfinite(v) for v in got) and got[-1] < got[0]


# --- exact resume ---------------------------------------------------------------------------------------

RESUME_CASES = {
    "adam-steplr": ({"type": "Adam", "lr": 0.01}, {"type": "StepLR", "step_size": 2, "gamma": 0.5}),
    "sgd-momentum-onecycle": ({"type": "SGD", "lr": 0.01, "momentum": 0.9, "nesterov": True},
                              {"type": "OneCycleLR", "max_lr": 0.05}),
    "adamw-plateau": ({"type": "AdamW", "lr": 0.01, "amsgrad": True},
                      {"type": "ReduceLROnPlateau", "patience": 0, "factor": 0.5}),
    "rmsprop-cosine-step": ({"type": "RMSprop", "lr": 0.005, "momentum": 0.5, "centered": True},
                            {"type": "CosineAnnealingLR", "interval": "step"}),
}


def dropout_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32),
                         nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_from_a_checkpoint_is_bit_exact(case: str) -> None:
    optimizer, scheduler = RESUME_CASES[case]
    spec = make_spec(optimizer=optimizer, scheduler=scheduler,
                     training={"epochs": 6, "batch_size": 16, "shuffle": True, "checkpoint": {"every_epochs": 1}})
    data = regression_data(96, 8, n_val=24)
    whole = Recorder()
    whole.run(dropout_net(0), spec, data)
    at_three = next(c for c in whole.checkpoints if c.epoch == 3)
    assert at_three.step == 18 and not at_three.is_final

    torch.manual_seed(12345)  # the global RNG (Dropout's) must come from the checkpoint, not from here
    resumed_model = dropout_net(99)
    resumed = Recorder()
    result = resumed.run(resumed_model, spec, data, resume=(at_three.weights, at_three.state))

    assert result.status == "succeeded" and result.steps == 36 and result.epochs == 6
    after = [(s, v) for s, v in whole.series("train_loss") if s > 18]
    assert resumed.series("train_loss") == after  # exact float equality, step by step
    assert resumed.series("lr") == [(s, v) for s, v in whole.series("lr") if s > 18]
    assert resumed.series("val_loss") == [(s, v) for s, v in whole.series("val_loss") if s > 18]
    final, _ = load_weights(whole.checkpoints[-1].weights)
    for name, tensor in resumed_model.state_dict().items():
        assert torch.equal(tensor, final[name]), name
    ours, theirs = (safetensors.torch.load(r.checkpoints[-1].state) for r in (resumed, whole))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resuming_from_the_final_checkpoint_trains_nothing_more() -> None:
    spec = make_spec()
    data = regression_data()
    first = Recorder()
    first.run(mlp(0, 4, 8, 1), spec, data)
    final = first.checkpoints[-1]
    model = mlp(0, 4, 8, 1)
    again = Recorder()
    result = again.run(model, spec, data, resume=(final.weights, final.state))
    assert result.status == "succeeded" and result.steps == final.step and not again.points
    assert all(torch.equal(t, load_weights(final.weights)[0][k]) for k, t in model.state_dict().items())


# --- every loss, optimizer and scheduler ----------------------------------------------------------------


def _classification_data(n: int = 32, classes: int = 3) -> TrainData:
    g = torch.Generator().manual_seed(3)
    return TrainData(torch.randn(n, 4, generator=g), torch.arange(n) % classes, None, None,
                     task="classification", classes=[str(i) for i in range(classes)])


LOSS_CASES: dict[str, tuple[dict[str, Any], int, str]] = {
    "MSELoss": ({"type": "MSELoss"}, 1, "regression"),
    "L1Loss": ({"type": "L1Loss"}, 1, "regression"),
    "SmoothL1Loss": ({"type": "SmoothL1Loss", "beta": 0.5}, 1, "regression"),
    "HuberLoss": ({"type": "HuberLoss", "delta": 2.0}, 1, "regression"),
    "BCEWithLogitsLoss": ({"type": "BCEWithLogitsLoss", "pos_weight": [2.0]}, 1, "binary"),
    "CrossEntropyLoss": ({"type": "CrossEntropyLoss", "weight": [1.0, 2.0, 1.0], "label_smoothing": 0.1}, 3,
                         "classification"),
    "NLLLoss": ({"type": "NLLLoss"}, 3, "classification"),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_every_loss_trains_a_step(name: str) -> None:
    loss, outputs, task = LOSS_CASES[name]
    if task == "classification":
        data = _classification_data()
    else:
        data = regression_data()
        if task == "binary":
            data = TrainData(data.x_train, (data.y_train > 0).float(), None, None, task="binary")
    model = mlp(0, 4, 8, outputs)
    if name == "NLLLoss":
        model.append(nn.LogSoftmax(dim=1))
    before = params_of(model)
    rec = Recorder()
    result = rec.run(model, make_spec(loss=loss, training={"max_steps": 1, "epochs": None}), data)
    assert result.steps == 1
    assert math.isfinite(rec.series("train_loss")[0][1])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


OPTIMIZERS = [
    {"type": "SGD", "lr": 0.1},
    {"type": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    {"type": "Adam", "lr": 0.01, "amsgrad": True},
    {"type": "AdamW", "lr": 0.01},
    {"type": "RMSprop", "lr": 0.01, "momentum": 0.9, "centered": True},
]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_every_optimizer_trains_a_step(optimizer: dict[str, Any]) -> None:
    model = mlp(0, 4, 8, 1)
    before = params_of(model)
    rec = Recorder()
    rec.run(model, make_spec(optimizer=optimizer, training={"max_steps": 2, "epochs": None}), regression_data())
    assert all(math.isfinite(v) for _, v in rec.series("train_loss"))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


SCHEDULERS: dict[str, tuple[dict[str, Any], int, list[float]]] = {
    # (scheduler, epochs of 4 steps with Adam(lr=0.01), the lr of each step)
    "StepLR": ({"type": "StepLR", "step_size": 1, "gamma": 0.5}, 2, [0.01] * 4 + [0.005] * 4),
    "ExponentialLR-step": ({"type": "ExponentialLR", "gamma": 0.5, "interval": "step"}, 2,
                           [0.01 * 0.5**i for i in range(8)]),
    "CosineAnnealingLR": ({"type": "CosineAnnealingLR"}, 2, [0.01] * 4 + [0.005] * 4),  # T_max = 2 epochs
    "OneCycleLR": ({"type": "OneCycleLR", "max_lr": 0.1, "pct_start": 0.5}, 2, []),
    # mode max on a falling loss: epoch 1 sets the best, epoch 2 is worse, so epoch 3 runs at half the lr
    "ReduceLROnPlateau": ({"type": "ReduceLROnPlateau", "monitor": "train_loss", "patience": 0, "mode": "max",
                           "factor": 0.5}, 3, [0.01] * 8 + [0.005] * 4),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_moves_the_learning_rate(name: str) -> None:
    scheduler, epochs, expected = SCHEDULERS[name]
    model = mlp(0, 4, 8, 1)
    before = params_of(model)
    rec = Recorder()
    rec.run(model, make_spec(scheduler=scheduler, training={"epochs": epochs}), regression_data())
    lrs = [v for _, v in rec.series("lr")]
    assert len(lrs) == 4 * epochs and all(math.isfinite(v) for _, v in rec.series("train_loss"))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if expected:
        assert lrs == pytest.approx(expected, rel=1e-9)
    else:  # one cycle over the run's 8 steps: up to max_lr at the middle, then down far below the start
        assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < lrs[0]


def test_per_batch_gather_for_large_sets_gives_the_same_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(training={"epochs": 3, "batch_size": 5, "shuffle": True})
    runs = []
    for limit in (engine_loop.MAX_EPOCH_GATHER_BYTES, 0):  # 0: every set counts as too large to copy per epoch
        monkeypatch.setattr(engine_loop, "MAX_EPOCH_GATHER_BYTES", limit)
        rec = Recorder()
        rec.run(mlp(0, 4, 8, 1), spec, regression_data())
        runs.append(rec.series("train_loss"))
    assert len(runs[0]) == 21 and runs[0] == runs[1]


def _dropout_batchnorm_net() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                         nn.Sequential(nn.Linear(16, 8), nn.Tanh()), nn.Linear(8, 1))


def test_mini_batches_give_a_hand_written_loops_losses_bit_for_bit() -> None:
    # fit() calls the layers' forwards and clears the grads without Module.__call__ and zero_grad's bookkeeping
    # (worker.engine.direct); the kernels, their order and the RNG draws (Dropout) must stay those of model(x).
    spec = make_spec(training={"epochs": 3, "batch_size": 8, "shuffle": True, "log_every_steps": 1})
    data = regression_data(n=37)
    model, reference = _dropout_batchnorm_net(), _dropout_batchnorm_net()
    torch.manual_seed(11)
    rec = Recorder()
    rec.run(model, spec, data)

    torch.manual_seed(11)
    order = torch.Generator().manual_seed(spec.training.seed)
    opt = torch.optim.Adam(reference.parameters(), lr=0.01)
    expected = []
    for _ in range(3):
        perm = torch.randperm(37, generator=order)
        xs, ys = data.x_train[perm], data.y_train[perm]
        for lo in range(0, 37, 8):
            loss = nn.MSELoss()(reference(xs[lo : lo + 8]), ys[lo : lo + 8])
            opt.zero_grad()
            loss.backward()
            opt.step()
            expected.append(loss.item())
    assert [v for _, v in rec.series("train_loss")] == expected
    for p, q in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_hooks_on_the_model_still_run_every_step() -> None:
    # A hook (the model's own or a global one) means model(x) does more than forward(x): fit() must call model(x).
    spec = make_spec(training={"epochs": 2, "batch_size": 8, "log_every_steps": 1})
    model = mlp(0, 4, 8, 1)
    seen = {"layer": 0, "global": 0}
    layer_hook = model[0].register_forward_hook(lambda *_: seen.__setitem__("layer", seen["layer"] + 1))
    global_hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, *_: seen.__setitem__("global", seen["global"] + (m is model)))
    try:
        fit(model, spec, regression_data())
    finally:
        layer_hook.remove()
        global_hook.remove()
    assert seen == {"layer": 8, "global": 8}  # 2 epochs x 4 batches; no validation rows


def test_cpu_threads_sets_a_cpu_runs_thread_count_up_to_the_callers_and_restores_it() -> None:
    torch.set_num_threads(2)  # the worker's own count (the fixture restores the test process's)
    model = mlp(0, 4, 8, 1)

    def threads_while_training(**training: Any) -> set[int]:
        seen: set[int] = set()
        fit(copy.deepcopy(model), make_spec(training=training), regression_data(),
            on_progress=lambda progress: seen.add(torch.get_num_threads()))
        assert torch.get_num_threads() == 2
        return seen

    assert threads_while_training() == {1}  # a model this small: one thread unless the spec says otherwise
    assert threads_while_training(cpu_threads=2) == {2}
    assert threads_while_training(cpu_threads=64) == {2}  # never more than the worker has
    with pytest.raises(ValidationError, match="training.cpu_threads"):
        make_spec(training={"cpu_threads": 0})


def test_gradient_clipping_bounds_the_update() -> None:
    data = regression_data()
    data.y_train = data.y_train * 1000  # huge gradients
    spec = make_spec(optimizer={"type": "SGD", "lr": 0.1},
                     training={"max_steps": 1, "epochs": None, "batch_size": 32, "grad_clip_norm": 0.01})
    model = mlp(0, 4, 8, 1)
    before = params_of(model)
    fit(model, spec, data)
    moved = torch.cat([(a - b.detach()).flatten() for a, b in zip(before, model.parameters())]).norm()
    assert float(moved) == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr * max_norm


# --- stopping -------------------------------------------------------------------------------------------


def test_early_stopping_stops_when_the_monitor_stalls() -> None:
    spec = make_spec(optimizer={"type": "SGD", "lr": 1e-9},
                     training={"epochs": 20, "early_stopping": {"monitor": "val_loss", "patience": 2,
                                                                "min_delta": 1.0}})
    rec = Recorder()
    result = rec.run(mlp(0, 4, 8, 1), spec, regression_data(n_val=16))
    assert result.status == "early_stopped"
    assert result.epochs == 3 and result.steps == 12  # epoch 1 sets the best, 2 and 3 fail to beat it by 1.0
    assert rec.checkpoints[-1].is_final and rec.checkpoints[-1].epoch == 3
    assert rec.checkpoints[-1].monitor == "val_loss"
    assert rec.checkpoints[-1].monitor_value == rec.checkpoints[-1].metrics["val_loss"]


def test_should_stop_cancels_before_the_next_step_and_writes_nothing_more() -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 6  # allow 6 steps: one full epoch of 4 and 2 more

    rec = Recorder()
    model = mlp(0, 4, 8, 1)
    spec = make_spec(training={"epochs": 5, "checkpoint": {"every_epochs": 1}})
    result = rec.run(model, spec, regression_data(), should_stop=should_stop)
    assert result.status == "cancelled" and result.steps == 6 and result.epochs == 1
    assert [c.epoch for c in rec.checkpoints] == [1] and not rec.checkpoints[0].is_final
    assert max(p.step for p in rec.points) == 4  # the 2 steps of the cut epoch report nothing


def test_max_steps_stops_mid_epoch_with_a_final_checkpoint() -> None:
    rec = Recorder()
    spec = make_spec(training={"epochs": None, "max_steps": 7, "checkpoint": {"every_epochs": 1}})
    result = rec.run(mlp(0, 4, 8, 1), spec, regression_data())
    assert result == FitResult("succeeded", 7, 2, result.final_metrics)
    assert [(c.epoch, c.step, c.is_final) for c in rec.checkpoints] == [(1, 4, False), (2, 7, True)]
    assert [s for s, _ in rec.series("train_loss")] == list(range(1, 8))


def test_divergence_names_the_first_bad_step() -> None:
    data = regression_data()
    data.y_train[9, 0] = float("inf")  # in the third batch of 4 rows
    spec = make_spec(optimizer={"type": "SGD", "lr": 0.5},
                     training={"batch_size": 4, "shuffle": False, "log_every_steps": 2, "epochs": 3})
    rec = Recorder()
    with pytest.raises(TrainingDiverged) as info:
        rec.run(mlp(0, 4, 8, 1), spec, data)
    message = str(info.value)
    assert "loss became inf at step 3 (epoch 1)" in message
    assert "lower learning rate" in message and "optimizer.lr is 0.5" in message
    assert info.value.step == 3
    assert rec.series("train_loss") and all(s < 3 for s, _ in rec.series("train_loss"))
    assert not rec.checkpoints


# --- "best" is the best epoch ---------------------------------------------------------------------------


def _overfitting_case(epochs: int, **training: Any) -> tuple[JobSpec, TrainData]:
    """Validation targets are 0.4 x the training relation: val_loss falls, bottoms out (epoch 9), then rises."""
    g = torch.Generator().manual_seed(4)
    x, w, x_val = torch.randn(64, 4, generator=g), torch.randn(4, 1, generator=g), torch.randn(32, 4, generator=g)
    data = TrainData(x, x @ w, x_val, 0.4 * (x_val @ w), task="regression")
    spec = make_spec(optimizer={"type": "SGD", "lr": 0.02},
                     training={"epochs": epochs, "batch_size": 16, "checkpoint": {"every_epochs": 4}, **training})
    return spec, data


def test_best_names_the_best_epochs_weights_between_checkpoint_cadence_points(tmp_path: Path) -> None:
    spec, data = _overfitting_case(30, early_stopping={"monitor": "val_loss", "patience": 3})
    rec = Recorder()
    result = rec.run(mlp(0, 4, 8, 1), spec, data)
    val = dict(rec.series("val_loss"))
    best_step = min(val, key=lambda s: val[s])
    best_epoch = best_step // 4  # 4 steps an epoch
    assert result.status == "early_stopped" and best_epoch % 4 != 0 and best_epoch < result.epochs  # off-cadence

    # The best epoch's weights were kept and written (weights only: nothing resumes from them)...
    held = next(c for c in rec.checkpoints if c.epoch == best_epoch)
    assert held.monitor_value == val[best_step] and not held.resumable and not held.is_final
    # ...and they are the weights a run that ends at that epoch finishes with.
    short_spec, _ = _overfitting_case(best_epoch)
    short = mlp(0, 4, 8, 1)
    Recorder().run(short, short_spec, data)
    kept, meta = load_weights(held.weights)
    assert meta["epoch"] == best_epoch and all(torch.equal(t, kept[k]) for k, t in short.state_dict().items())

    # Recorded as the worker records them, the job's best is that checkpoint, latest the final one.
    url = f"sqlite:///{tmp_path / 'best.db'}"
    migrate_to_head(url)
    sessions = sessionmaker(bind=make_engine(Settings(database_url=url, home=tmp_path)), expire_on_commit=False)
    policy = spec.training.checkpoint
    with sessions() as session, session.begin():
        job = Job(tenant="t", name="best", status="running", spec={}, report={}, data_info={}, last_metrics={})
        session.add(job)
        session.flush()
        for blob in rec.checkpoints:
            record_checkpoint(session, job=job, step=blob.step, epoch=blob.epoch, metric=blob.monitor,
                              value=blob.monitor_value, weights=blob.weights, state=blob.state,
                              is_final=blob.is_final, keep_last=policy.keep_last, keep_best=policy.keep_best,
                              mode=policy.mode)
        best = session.get(Checkpoint, job.best_checkpoint_id)
        assert best is not None and (best.epoch, best.value) == (best_epoch, val[best_step])
        assert best.weights == held.weights
        resume = load_resume_state(session, job=job)
        assert resume is not None and resume[0].is_final and resume[0].epoch == result.epochs
        # keep_last counts checkpoints a run resumes from: the best-weights one is kept beside them, not in place
        # of one of them, and the job's epoch is the latest checkpoint's, not the best one's.
        kept = list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job.id)))
        resumable = [c for c in kept if c.state]
        assert len(resumable) == min(policy.keep_last, sum(1 for c in rec.checkpoints if c.resumable))
        assert {c.id for c in kept} == {c.id for c in resumable} | {best.id}


def test_an_improving_checkpoint_epoch_needs_no_extra_copy() -> None:
    spec, data = _overfitting_case(8)  # val_loss still falling at epochs 4 and 8, both cadence points
    rec = Recorder()
    rec.run(mlp(0, 4, 8, 1), spec, data)
    assert [(c.epoch, c.resumable) for c in rec.checkpoints] == [(4, True), (8, True)]


def test_a_checkpoint_epoch_packs_first_then_hands_over_points_progress_and_checkpoints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The points up to a checkpoint go first (a resume from it loses none), the held best weights right before the
    # epoch's own checkpoint; both are packed before the points leave, so the worker's writer finds the epoch's
    # writes queued together and applies them in one transaction.
    spec, data = _overfitting_case(16)  # epoch 9 is best: epoch 12's checkpoint comes after its held weights
    calls: list[tuple[str, int]] = []
    real_pack = engine_loop.pack_weights
    monkeypatch.setattr(engine_loop, "pack_weights", lambda *a, **k: calls.append(("pack", k["epoch"])) or real_pack(*a, **k))
    fit(mlp(0, 4, 8, 1), spec, data, clock=frozen_clock,
        on_points=lambda points: calls.append(("points", max(p.epoch for p in points))),
        on_progress=lambda progress: calls.append(("progress", progress.epoch)),
        on_checkpoint=lambda blob: calls.append(("best weights" if not blob.resumable else "checkpoint", blob.epoch)))
    at_checkpoints = [i for i, (kind, _) in enumerate(calls) if kind == "checkpoint"]
    assert [calls[i][1] for i in at_checkpoints] == [4, 8, 12, 16]
    i = at_checkpoints[2]
    assert calls[i - 5 : i + 1] == [("pack", 9), ("pack", 12), ("points", 12), ("progress", 12), ("best weights", 9),
                                     ("checkpoint", 12)]
    for i in at_checkpoints:
        assert calls[i - 2 : i] in ([("points", calls[i][1]), ("progress", calls[i][1])],
                                    [("progress", calls[i][1]), ("best weights", 9)])


def test_a_resumed_run_still_writes_the_best_epoch() -> None:
    spec, data = _overfitting_case(30, early_stopping={"monitor": "val_loss", "patience": 3})
    whole = Recorder()
    whole.run(mlp(0, 4, 8, 1), spec, data)
    at_four = next(c for c in whole.checkpoints if c.epoch == 4)
    resumed = Recorder()
    resumed.run(mlp(1, 4, 8, 1), spec, data, resume=(at_four.weights, at_four.state))
    assert [(c.epoch, c.weights) for c in resumed.checkpoints] == [
        (c.epoch, c.weights) for c in whole.checkpoints if c.epoch > 4]


class BlowsUpAfter(nn.Module):
    """A linear model whose training forward passes turn infinite after ``steps`` of them (evaluation stays finite)."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.left = nn.Linear(4, 1), steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.left -= 1
        out = self.linear(x)
        return out * float("inf") if self.training and self.left < 0 else out


def test_points_held_by_the_throttle_reach_on_points_when_the_next_epoch_diverges() -> None:
    # The frozen clock holds epoch 1's points in the throttle (no checkpoint is due); epoch 2's first step diverges.
    spec = make_spec(training={"epochs": 3, "batch_size": 8})
    rec = Recorder()
    with pytest.raises(TrainingDiverged) as info:
        rec.run(BlowsUpAfter(4), spec, regression_data(n_val=8))
    assert (info.value.step, info.value.epoch) == (5, 2)
    assert [s for s, _ in rec.series("train_loss")] == [1, 2, 3, 4]
    assert [s for s, _ in rec.series("val_loss")] == [4] and not rec.checkpoints


def test_a_moving_clock_reads_and_reports_mid_epoch() -> None:
    ticks = itertools.count(step=2.0)  # every reading 2 s later than the last: past every throttle
    batches: list[list[Point]] = []
    fit(mlp(0, 4, 8, 1), make_spec(training={"epochs": 1, "batch_size": 8}), regression_data(),
        on_points=batches.append, clock=lambda: float(next(ticks)))
    # One batch per logged step, then the epoch's own points (epoch_time_s, ...) at its end.
    assert [[p.step for p in b if p.name == "train_loss"] for b in batches] == [[1], [2], [3], [4], []]
    assert {p.name for p in batches[-1]} == {"epoch_time_s", "samples_per_s"}


def test_points_every_epoch_hands_over_each_epoch_before_the_next_trains() -> None:
    # A sweep's pruner decides at each epoch end from the epoch's points, so they must leave then even when the
    # throttle would hold them (frozen clock, no checkpoint due): one batch per epoch, in order, nothing held.
    spec = make_spec(training={"epochs": 4, "batch_size": 8, "checkpoint": {"every_epochs": 10}})
    held: list[list[Point]] = []
    fit(mlp(0, 4, 8, 1), spec, regression_data(n_val=8), on_points=held.append, clock=frozen_clock)
    assert len(held) < 4  # without the option the throttle holds several epochs in one hand-over
    batches: list[list[Point]] = []
    stop_after: list[int] = []

    def on_points(points: list[Point]) -> None:
        batches.append(points)
        stop_after.extend(p.epoch for p in points if p.name == "epoch_time_s" and p.epoch == 2)

    result = fit(mlp(0, 4, 8, 1), spec, regression_data(n_val=8), on_points=on_points, clock=frozen_clock,
                 should_stop=lambda: bool(stop_after), points_every_epoch=True)
    assert [sorted({p.epoch for p in b}) for b in batches[:2]] == [[1], [2]]
    assert {"val_loss", "epoch_time_s"} <= {p.name for p in batches[0]}
    # Told to stop when epoch 2's points arrived: epoch 3 never trained a step.
    assert (result.status, result.steps, result.epochs) == ("cancelled", 2 * 4, 2)  # 32 rows / batches of 8


# --- what gets reported ---------------------------------------------------------------------------------


def test_log_every_steps_sets_the_cadence_of_train_loss_and_lr() -> None:
    rec = Recorder()
    rec.run(mlp(0, 4, 8, 1), make_spec(training={"epochs": 3, "log_every_steps": 3}), regression_data())
    assert [s for s, _ in rec.series("train_loss")] == [3, 6, 9, 12]
    assert [s for s, _ in rec.series("lr")] == [3, 6, 9, 12]
    # epoch-level points carry the step at the end of their epoch
    assert [(p.step, p.epoch) for p in rec.points if p.name == "epoch_time_s"] == [(4, 1), (8, 2), (12, 3)]


def test_long_epochs_report_points_and_progress_before_they_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mid-epoch, what was logged leaves once FLUSH_EVERY_S has passed since the last hand-over."""
    monkeypatch.setattr(engine_points, "FLUSH_EVERY_POINTS", 1000)  # time alone decides here
    now = [0.0]

    def each_step_takes_0_4_s() -> bool:  # should_stop() is asked before every step
        now[0] += 0.4
        return False

    batches: list[list[Point]] = []
    progress: list[Progress] = []
    data = regression_data(n_val=8)
    result = fit(mlp(0, 4, 8, 1), make_spec(training={"epochs": 1, "batch_size": 4}), data,
                 on_points=batches.append, on_progress=progress.append, should_stop=each_step_takes_0_4_s,
                 clock=lambda: now[0])
    # 1.2 s after the start, after step 3; 1.2 s later, after step 6; the rest at the epoch's end.
    assert [[p.step for p in b if p.name == "train_loss"] for b in batches] == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert [(p.step, p.total_steps, p.epoch, p.epochs) for p in progress] == [(3, 8, 1, 1), (6, 8, 1, 1),
                                                                             (8, 8, 1, 1)]
    losses = [p.value for b in batches for p in b if p.name == "train_loss"]
    assert result.final_metrics["train_loss"] == pytest.approx(sum(losses) / 8, rel=1e-12)  # the epoch mean


def test_points_read_mid_epoch_wait_for_the_next_hand_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """Losses are read every FLUSH_EVERY_POINTS logged steps (so few tensors pile up), but reading is not
    writing: with no time passing, nothing leaves before the run's last checkpoint, however many reads."""
    monkeypatch.setattr(engine_points, "FLUSH_EVERY_POINTS", 3)
    batches: list[list[Point]] = []
    reads: list[int] = []
    read_losses = engine_points.PointBuffer.read_losses

    def counted(self: engine_points.PointBuffer, epoch: int, *, lr: float) -> None:
        reads.append(len(self.losses))
        read_losses(self, epoch, lr=lr)

    monkeypatch.setattr(engine_points.PointBuffer, "read_losses", counted)
    fit(mlp(0, 4, 8, 1), make_spec(training={"epochs": 2, "batch_size": 4}), regression_data(n_val=8),
        on_points=batches.append, clock=frozen_clock)
    assert reads == [3, 3, 2, 3, 3, 2]  # 8 steps an epoch
    assert [[p.step for p in b if p.name == "train_loss"] for b in batches] == [list(range(1, 17))]


def test_default_log_cadence_keeps_about_a_thousand_points() -> None:
    rec = Recorder()
    spec = make_spec(model={"layers": [{"type": "Linear", "in_features": 4, "out_features": 1}]},
                     training={"epochs": None, "max_steps": 2500, "batch_size": 2, "log_every_steps": None,
                               "checkpoint": {"every_epochs": 1000}})
    rec.run(nn.Linear(4, 1), spec, regression_data())
    steps = [s for s, _ in rec.series("train_loss")]
    assert steps == list(range(3, 2501, 3))  # every ceil(2500 / 1000) = 3 steps


def test_epoch_metrics_per_task() -> None:
    rec = Recorder()
    rec.run(mlp(0, 4, 8, 1), make_spec(), regression_data(n_val=16))
    names = {p.name for p in rec.points}
    assert names == {"train_loss", "lr", "val_loss", "val_mae", "val_r2", "epoch_time_s", "samples_per_s"}
    classes = _classification_data(48)
    data = TrainData(classes.x_train[:32], classes.y_train[:32], classes.x_train[32:], classes.y_train[32:],
                     task="classification", classes=classes.classes)
    rec = Recorder()
    result = rec.run(mlp(0, 4, 8, 3), make_spec(loss={"type": "CrossEntropyLoss"}), data)
    assert {p.name for p in rec.points} == {"train_loss", "lr", "val_loss", "val_accuracy", "epoch_time_s",
                                           "samples_per_s"}
    assert 0.0 <= result.final_metrics["val_accuracy"] <= 1.0
    assert rec.checkpoints[-1].monitor == "val_loss"


def test_checkpoints_are_safetensors_files_a_fresh_model_loads(tmp_path: Path) -> None:
    data = regression_data(n_val=8)
    data.mean, data.std = torch.zeros(4), torch.ones(4)
    spec = make_spec(training={"epochs": 5, "checkpoint": {"every_epochs": 2}})
    model = mlp(0, 4, 8, 1)
    rec = Recorder()
    rec.run(model, spec, data)
    assert [(c.epoch, c.is_final) for c in rec.checkpoints] == [(2, False), (4, False), (5, True)]

    final = rec.checkpoints[-1]
    path = tmp_path / "final.safetensors"
    path.write_bytes(final.weights)
    fresh = mlp(42, 4, 8, 1)
    fresh.load_state_dict(safetensors.torch.load_file(path))
    assert torch.equal(fresh(data.x_train), model(data.x_train))
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["trainserve"])
    assert meta == {"task": "regression", "classes": None, "mean": [0.0] * 4, "std": [1.0] * 4,
                    "input_shape": [4], "step": 20, "epoch": 5}
    assert load_weights(final.weights)[1] == meta

    state = safetensors.torch.load(final.state)  # no pickle: a plain safetensors blob
    assert {"rng.torch", "rng.data_order"} <= set(state)
    assert any(k.startswith("optimizer.") for k in state)


@pytest.mark.parametrize("optimizer", ["Adam", "AdamW", "SGD", "RMSprop"])
def test_optimizers_default_to_pytorchs_own_choice_and_take_foreach_and_fused(optimizer: str) -> None:
    def built(**kernel: Any) -> torch.optim.Optimizer:
        spec = make_spec(optimizer={"type": optimizer, "lr": 0.01, **kernel})
        return build_optimizer(spec, mlp(0, 4, 8, 1).parameters())

    default = built()
    assert default.defaults["foreach"] is None and default.defaults.get("fused") is None  # as torch.optim.X(...)
    assert built(foreach=True).defaults["foreach"] is True
    assert built(foreach=False).defaults["foreach"] is False
    if optimizer == "RMSprop":  # PyTorch has no fused RMSprop: the spec refuses the field
        with pytest.raises(ValueError, match="fused"):
            make_spec(optimizer={"type": optimizer, "fused": True})
    else:
        assert built(fused=True).defaults["fused"] is True
        with pytest.raises(ValueError, match="fused and foreach cannot both be true"):
            make_spec(optimizer={"type": optimizer, "fused": True, "foreach": True})


# --- real learning --------------------------------------------------------------------------------------


def test_iris_mlp_learns() -> None:
    spec = JobSpec.model_validate({
        "model": {"layers": [{"type": "Linear", "out_features": 16}, {"type": "ReLU"},
                             {"type": "Linear", "out_features": 3}]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": 0.01},
        "training": {"epochs": 25, "batch_size": 16, "seed": 0, "validation_split": 0.2, "normalize": True},
        "data": {"source": "builtin", "name": "iris"},
    })
    data = load_data(spec)
    result = fit(build_model(spec, tuple(data.x_train.shape[1:])), spec, data)
    assert result.final_metrics["val_accuracy"] >= 0.9


def test_digits_cnn_learns() -> None:
    spec = JobSpec.model_validate(digits_spec())
    data = load_data(spec)
    assert tuple(data.x_train.shape[1:]) == (1, 8, 8)
    result = fit(build_model(spec, (1, 8, 8)), spec, data)
    assert result.final_metrics["val_accuracy"] >= 0.95


def digits_spec(**training: Any) -> dict[str, Any]:
    return {
        "model": {"layers": [
            {"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 3, "padding": 1},
            {"type": "ReLU"},
            {"type": "MaxPool2d", "kernel_size": 2},
            {"type": "Flatten"},
            {"type": "Linear", "out_features": 10},
        ]},
        "loss": {"type": "CrossEntropyLoss"},
        "optimizer": {"type": "Adam", "lr": 0.005},
        "training": {"epochs": 8, "batch_size": 64, "seed": 0, "validation_split": 0.2, "normalize": True,
                     **training},
        "data": {"source": "builtin", "name": "digits", "input_shape": [1, 8, 8]},
    }


def test_nonlinear_regression_learns() -> None:
    # Friedman #1: y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise, x uniform in [0, 1]^5
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1000, 5, generator=g)
    y = (10 * torch.sin(math.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
         + 0.5 * torch.randn(1000, generator=g)).unsqueeze(1)
    y = (y - y[:800].mean()) / y[:800].std()
    data = TrainData(x[:800], y[:800], x[800:], y[800:], task="regression")
    spec = make_spec(optimizer={"type": "Adam", "lr": 0.01},
                     training={"epochs": 20, "batch_size": 64, "log_every_steps": None})
    result = fit(mlp(0, 5, 64, 64, 1), spec, data)
    assert result.final_metrics["val_r2"] >= 0.9


# --- GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seed_example_and_digits_cnn_train_on_cuda_in_bf16() -> None:
    raw = copy.deepcopy(SEED_EXAMPLE)
    raw["training"].update(device="cuda", precision="bf16-mixed")
    spec = JobSpec.model_validate(raw)
    data = load_data(spec)
    expected, _ = hand_written_losses(data.x_train, data.y_train)
    rec = Recorder()
    rec.run(build_model(spec, (32,)), spec, data, device="cuda")
    got = [v for _, v in rec.series("train_loss")]
    assert len(got) == 100 and all(math.isfinite(v) for v in got)
    assert got[0] == pytest.approx(expected[0], rel=0.05)  # bf16 matmuls: close, not equal
    assert got[-1] < 0.5 * got[0]

    spec = JobSpec.model_validate(digits_spec(device="cuda", precision="bf16-mixed"))
    data = load_data(spec)
    model = build_model(spec, (1, 8, 8))
    result = fit(model, spec, data, device="cuda")
    assert result.final_metrics["val_accuracy"] >= 0.95
    assert next(model.parameters()).device.type == "cuda"
    assert build_optimizer(spec, model.parameters(), device="cuda").defaults["fused"]
