"""The spec → nn.Module builder and the static check: shapes, counts, errors and warnings with their paths."""

from __future__ import annotations

import copy
import dataclasses
import random
import tracemalloc
from typing import Any

import pytest
import torch
from torch import nn

from service.datainfo import DataInfo
from service.nets import Issue, Limits, ShapeError, SpecReport, build_model, check_spec, task_kind
from service.settings import Settings
from service.spec import SEED_EXAMPLE, JobSpec
from tests.conftest import LiveServer

SEED_LAYERS = SEED_EXAMPLE["model"]["layers"]
DIGITS_CNN: list[dict[str, Any]] = [
    {"type": "Conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},
    {"type": "Flatten"},
    {"type": "Linear", "out_features": 10},
]


def make_spec(
    layers: list[Any],
    *,
    loss: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    init: str = "default",
) -> JobSpec:
    raw: dict[str, Any] = {
        "model": {"layers": copy.deepcopy(layers), "init": init},
        "loss": loss or {"type": "MSELoss"},
        "optimizer": optimizer or {"type": "Adam", "lr": 0.001},
        "training": {"epochs": 2, "batch_size": 16, "seed": 0, **(training or {})},
        "data": data or {"source": "synthetic", "n_samples": 64, "n_features": 32},
    }
    if scheduler is not None:
        raw["scheduler"] = scheduler
    return JobSpec.model_validate(raw)


def info(
    shape: tuple[int, ...] = (32,),
    *,
    n_rows: int = 64,
    target_width: int = 1,
    n_classes: int | None = None,
    looks_unnormalized: bool = False,
) -> DataInfo:
    return DataInfo(
        input_shape=shape,
        n_rows=n_rows,
        target_width=target_width,
        n_classes=n_classes,
        looks_unnormalized=looks_unnormalized,
    )


def locs(issues: list[Issue]) -> list[str]:
    return [issue.loc for issue in issues]


def the_issue(issues: list[Issue], loc: str) -> Issue:
    found = [issue for issue in issues if issue.loc == loc]
    assert found, f"no issue at {loc}; got {issues}"
    return found[0]


def forward_shapes(model: nn.Sequential, input_shape: tuple[int, ...], batch: int = 3) -> list[list[int]]:
    x = torch.randn(batch, *input_shape)
    shapes = []
    for module in model:
        x = module(x)
        shapes.append(list(x.shape[1:]))
    return shapes


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- every layer builds, and the report matches PyTorch --------------------------------------------------

STACKS: list[tuple[str, tuple[int, ...], list[dict[str, Any]]]] = [
    ("seed-mlp", (32,), SEED_LAYERS),
    ("digits-cnn", (1, 8, 8), DIGITS_CNN),
    (
        "mlp-every-activation",
        (6,),
        [
            {"type": "Linear", "out_features": 8, "bias": False},
            {"type": "BatchNorm1d"},
            {"type": "LeakyReLU", "negative_slope": 0.2},
            {"type": "Dropout", "p": 0.1},
            {"type": "Linear", "out_features": 8},
            {"type": "LayerNorm"},
            {"type": "PReLU", "num_parameters": 8},
            {"type": "ELU", "alpha": 0.5},
            {"type": "GELU", "approximate": "tanh"},
            {"type": "SiLU"},
            {"type": "Tanh"},
            {"type": "Sigmoid"},
            {"type": "Identity"},
            {"type": "Linear", "out_features": 3},
            {"type": "Softmax", "dim": 1},
            {"type": "LogSoftmax"},
        ],
    ),
    (
        "conv1d-stack",
        (2, 20),
        [
            {"type": "Conv1d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": "valid"},
            {"type": "BatchNorm1d"},
            {"type": "ReLU"},
            {"type": "Conv1d", "out_channels": 4, "kernel_size": [5], "padding": "same", "dilation": 2, "groups": 2},
            {"type": "MaxPool1d", "kernel_size": 2, "ceil_mode": True},
            {"type": "AvgPool1d", "kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False},
            {"type": "LayerNorm", "normalized_shape": [4, 5]},
            {"type": "Flatten"},
            {"type": "Linear", "out_features": 2},
        ],
    ),
    (
        "conv2d-stack",
        (3, 9, 7),
        [
            {"type": "Conv2d", "in_channels": 3, "out_channels": 6, "kernel_size": [3, 2], "stride": [2, 1],
             "padding": [1, 0], "init": "kaiming_normal"},
            {"type": "BatchNorm2d", "affine": False},
            {"type": "PReLU"},
            {"type": "MaxPool2d", "kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True},
            {"type": "AvgPool2d", "kernel_size": [2, 1]},
            {"type": "Flatten", "start_dim": 2},
            {"type": "Linear", "out_features": 5, "init": "xavier_uniform"},
            {"type": "Flatten"},
            {"type": "Linear", "out_features": 1},
        ],
    ),
]


@pytest.mark.parametrize(("name", "shape", "layers"), STACKS, ids=[s[0] for s in STACKS])
def test_report_matches_the_real_forward_pass(name: str, shape: tuple[int, ...], layers: list[dict[str, Any]]) -> None:
    spec = make_spec(layers)
    report = check_spec(spec, info(shape))
    model = build_model(spec, shape)

    real = forward_shapes(model, shape)
    assert [layer.output_shape for layer in report.layers] == real
    assert report.output_shape == real[-1]
    assert [layer.params for layer in report.layers] == [n_params(module) for module in model]
    assert report.total_params == report.trainable_params == n_params(model)
    assert [layer.type for layer in report.layers] == [type(module).__name__ for module in model]


def test_every_layer_type_is_covered_by_the_stacks() -> None:
    from service.spec import LAYER_TYPES

    used = {layer["type"] for _, _, layers in STACKS for layer in layers}
    assert used == set(LAYER_TYPES)


def test_seed_net_has_4225_parameters_and_reports_linear_flops() -> None:
    spec = JobSpec.model_validate(SEED_EXAMPLE)
    report = check_spec(spec, info((32,), n_rows=128))

    assert report.ok, report.errors
    assert report.total_params == 4225
    assert report.layers[0].params == 2112
    assert report.layers[0].flops == 2 * 32 * 64
    assert report.layers[1].flops == 64  # an activation costs one operation per element
    assert report.flops_per_sample == sum(layer.flops for layer in report.layers)
    assert (report.steps_per_epoch, report.total_steps) == (1, 100)


def test_digits_cnn_shapes_and_conv_flops() -> None:
    report = check_spec(make_spec(DIGITS_CNN, loss={"type": "CrossEntropyLoss"}), info((1, 8, 8), n_classes=10))

    assert report.ok, report.errors
    assert [layer.output_shape for layer in report.layers] == [[16, 8, 8], [16, 8, 8], [16, 4, 4], [256], [10]]
    assert report.layers[0].flops == 2 * 1 * 9 * 16 * 64
    assert report.total_params == (16 * 9 + 16) + (256 * 10 + 10)


def test_to_json_has_the_validate_endpoint_shape() -> None:
    body = check_spec(make_spec(SEED_LAYERS), info(looks_unnormalized=True)).to_json()

    assert list(body) == [
        "ok", "errors", "warnings", "input_shape", "output_shape", "layers", "total_params", "trainable_params",
        "flops_per_sample", "memory_bytes", "steps_per_epoch", "total_steps",
    ]
    assert body["warnings"][0].keys() == {"loc", "msg"}
    assert body["layers"][0] == {"index": 0, "type": "Linear", "output_shape": [64], "params": 2112, "flops": 4096}
    assert body["input_shape"] == [32] and body["output_shape"] == [1]


def test_to_json_holds_every_field_of_the_report() -> None:
    # to_json is written out by hand (asdict deep-copies): a field added to SpecReport must reach the answer too.
    for report in (check_spec(make_spec(SEED_LAYERS), info(looks_unnormalized=True)),
                   errors_of(make_spec([{"type": "Linear", "in_features": 3, "out_features": 1}]))):
        assert report.to_json() == dataclasses.asdict(report)


def test_memory_estimate_grows_with_optimizer_state_and_batch() -> None:
    data = info(n_rows=1024)
    sgd = check_spec(make_spec(SEED_LAYERS, optimizer={"type": "SGD"}), data).memory_bytes
    momentum = check_spec(make_spec(SEED_LAYERS, optimizer={"type": "SGD", "momentum": 0.9}), data).memory_bytes
    adam = check_spec(make_spec(SEED_LAYERS), data).memory_bytes
    big_batch = check_spec(make_spec(SEED_LAYERS, training={"batch_size": 256}), data).memory_bytes

    assert sgd >= 4225 * 4 * 2  # weights and grads at least
    assert momentum - sgd == 4225 * 4
    assert adam - sgd == 2 * 4225 * 4
    assert big_batch > adam


# --- build_model --------------------------------------------------------------------------------------


def test_build_model_weights_equal_a_hand_written_seeded_sequential() -> None:
    spec = make_spec(SEED_LAYERS, training={"seed": 0})
    model = build_model(spec, (32,))
    torch.manual_seed(0)
    by_hand = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    for (name, ours), (_, theirs) in zip(model.state_dict().items(), by_hand.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name


def test_build_model_cnn_weights_equal_hand_written_for_another_seed() -> None:
    spec = make_spec(DIGITS_CNN, training={"seed": 7})
    model = build_model(spec, (1, 8, 8))
    torch.manual_seed(7)
    by_hand = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 10)
    )

    for ours, theirs in zip(model.state_dict().values(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs)


def test_model_wide_init_applies_to_linear_with_zero_bias_and_layer_init_overrides_it() -> None:
    layers = [
        {"type": "Linear", "out_features": 400},
        {"type": "ReLU"},
        {"type": "Linear", "out_features": 3, "init": "default"},
    ]
    model = build_model(make_spec(layers, init="kaiming_normal"), (1000,))
    first, last = model[0], model[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)

    assert torch.count_nonzero(first.bias) == 0
    assert first.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.05)  # kaiming, relu gain
    assert torch.count_nonzero(last.bias) > 0  # PyTorch's default init keeps a random bias


def test_xavier_uniform_stays_within_its_bound() -> None:
    model = build_model(make_spec([{"type": "Linear", "out_features": 50, "init": "xavier_uniform"}]), (30,))
    bound = (6 / (30 + 50)) ** 0.5
    layer = model[0]
    assert isinstance(layer, nn.Linear)
    assert layer.weight.abs().max().item() <= bound
    assert layer.weight.abs().max().item() > 0.9 * bound  # spread over the whole range, not the default one


def test_build_model_resolves_in_features_from_the_input_shape() -> None:
    model = build_model(make_spec([{"type": "Linear", "out_features": 4}]), (9,))
    assert isinstance(model[0], nn.Linear) and model[0].in_features == 9


def test_build_model_refuses_a_stack_that_does_not_fit() -> None:
    spec = make_spec([{"type": "Linear", "in_features": 30, "out_features": 4}])
    with pytest.raises(ShapeError) as caught:
        build_model(spec, (32,))
    assert locs(caught.value.issues) == ["model.layers[0].in_features"]


def test_task_kind_follows_the_loss() -> None:
    assert task_kind(make_spec(SEED_LAYERS, loss={"type": "CrossEntropyLoss"})) == "classification"
    assert task_kind(make_spec(SEED_LAYERS, loss={"type": "NLLLoss"})) == "classification"
    assert task_kind(make_spec(SEED_LAYERS, loss={"type": "BCEWithLogitsLoss"})) == "binary"
    assert task_kind(make_spec(SEED_LAYERS, loss={"type": "HuberLoss"})) == "regression"


def test_limits_come_from_settings() -> None:
    limits = Limits.from_settings(Settings(max_parameters=10, max_layers=3, max_rows=5, max_epochs=2, max_steps=9))
    assert limits == Limits(max_parameters=10, max_epochs=2, max_steps=9, max_rows=5, max_layers=3)


# --- shape errors -------------------------------------------------------------------------------------


def errors_of(spec: JobSpec, data: DataInfo | None = None, limits: Limits | None = None) -> SpecReport:
    report = check_spec(spec, data or info(), limits=limits or Limits())
    assert not report.ok
    return report


def test_in_features_mismatch_names_both_figures() -> None:
    layers = [
        {"type": "Linear", "in_features": 32, "out_features": 32},
        {"type": "ReLU"},
        {"type": "Linear", "in_features": 64, "out_features": 1},
    ]
    report = errors_of(make_spec(layers))
    issue = the_issue(report.errors, "model.layers[2].in_features")
    assert issue.msg == "expected 64, the previous layer outputs 32"
    assert report.layers[2].output_shape == [1]  # the walk goes on past a mismatch


def test_first_linear_is_checked_against_the_data_features() -> None:
    report = errors_of(make_spec([{"type": "Linear", "in_features": 30, "out_features": 1}]))
    assert the_issue(report.errors, "model.layers[0].in_features").msg == "expected 30, the data has 32 features"


def test_linear_on_images_hints_at_flatten() -> None:
    spec = make_spec([{"type": "Linear", "in_features": 64, "out_features": 1}])
    report = errors_of(spec, info((1, 8, 8)))
    assert "add Flatten" in the_issue(report.errors, "model.layers[0].in_features").msg


def test_in_channels_num_features_and_normalized_shape_mismatches() -> None:
    layers = [
        {"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3},
        {"type": "BatchNorm2d", "num_features": 8},
        {"type": "Flatten"},
        {"type": "LayerNorm", "normalized_shape": 10},
        {"type": "Linear", "out_features": 1},
    ]
    report = errors_of(make_spec(layers), info((1, 5, 5)))
    assert the_issue(report.errors, "model.layers[0].in_channels").msg == "expected 3, the data has 1 channel"
    assert the_issue(report.errors, "model.layers[1].num_features").msg == (
        "expected 8, the previous layer outputs 4 channels"
    )
    assert the_issue(report.errors, "model.layers[3].normalized_shape").msg == (
        "expected 10, the previous layer outputs 36"
    )


def test_conv2d_on_flat_samples_suggests_data_input_shape() -> None:
    report = errors_of(make_spec(DIGITS_CNN), info((64,)))
    issue = the_issue(report.errors, "model.layers[0]")
    assert "(C, H, W)" in issue.msg and "(64,)" in issue.msg
    assert "data.input_shape" in issue.msg and "[1, 8, 8]" in issue.msg
    assert report.output_shape is None


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        ({"type": "Conv1d", "out_channels": 2, "kernel_size": 2}, (1, 8, 8)),
        ({"type": "MaxPool1d", "kernel_size": 2}, (8,)),
        ({"type": "AvgPool1d", "kernel_size": 2}, (8,)),
        ({"type": "MaxPool2d", "kernel_size": 2}, (4, 8)),
        ({"type": "AvgPool2d", "kernel_size": 2}, (64,)),
        ({"type": "BatchNorm2d"}, (64,)),
        ({"type": "BatchNorm1d"}, (1, 8, 8)),
    ],
)
def test_layers_that_need_a_given_rank(layer: dict[str, Any], shape: tuple[int, ...]) -> None:
    report = errors_of(make_spec([layer, {"type": "Flatten"}, {"type": "Linear", "out_features": 1}]), info(shape))
    assert layer["type"] in the_issue(report.errors, "model.layers[0]").msg


def test_output_that_is_not_a_vector_per_sample_is_an_error_at_the_last_layer() -> None:
    layers = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Linear", "out_features": 3}]
    report = errors_of(make_spec(layers), info((1, 5, 5)))
    msg = the_issue(report.errors, "model.layers[2]").msg
    assert "(8, 3, 3)" in msg and "add Flatten" in msg


def test_kernel_larger_than_padded_input() -> None:
    layers = [{"type": "Conv1d", "out_channels": 2, "kernel_size": 5, "padding": 0}]
    report = errors_of(make_spec(layers), info((1, 3)))
    assert the_issue(report.errors, "model.layers[0].kernel_size").msg == "kernel 5 is larger than the padded input 3"


def test_pool_kernel_larger_than_input_and_padding_over_half_kernel() -> None:
    report = errors_of(make_spec([{"type": "MaxPool2d", "kernel_size": 4}]), info((1, 3, 3)))
    assert the_issue(report.errors, "model.layers[0].kernel_size").msg == "kernel 4 is larger than the padded input 3"

    report = errors_of(make_spec([{"type": "AvgPool2d", "kernel_size": 3, "padding": 2}, {"type": "Flatten"}]),
                       info((1, 8, 8)))
    assert "half the kernel" in the_issue(report.errors, "model.layers[0].padding").msg


def test_groups_must_divide_channels() -> None:
    layers = [{"type": "Conv1d", "out_channels": 4, "kernel_size": 1, "groups": 3}, {"type": "Flatten"}]
    report = errors_of(make_spec(layers), info((3, 4)))
    msg = the_issue(report.errors, "model.layers[0].groups").msg
    assert "3" in msg and "4" in msg


def test_same_padding_needs_stride_one() -> None:
    layers = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same", "stride": 2}]
    report = errors_of(make_spec(layers), info((1, 8, 8)))
    assert "stride 1" in the_issue(report.errors, "model.layers[0].padding").msg


def test_flatten_and_softmax_dims_out_of_range() -> None:
    report = errors_of(make_spec([{"type": "Flatten", "start_dim": 3}, {"type": "Linear", "out_features": 1}]),
                       info((4, 4)))
    assert "out of range" in the_issue(report.errors, "model.layers[0].start_dim").msg

    report = errors_of(make_spec([{"type": "Flatten", "end_dim": -5}]), info((4, 4)))
    assert "model.layers[0].end_dim" in locs(report.errors)

    report = errors_of(make_spec([{"type": "Linear", "out_features": 1}, {"type": "Softmax", "dim": 2}]))
    assert "out of range" in the_issue(report.errors, "model.layers[1].dim").msg


def test_prelu_parameters_must_match_channels() -> None:
    report = errors_of(make_spec([{"type": "PReLU", "num_parameters": 3}, {"type": "Linear", "out_features": 1}]))
    assert the_issue(report.errors, "model.layers[0].num_parameters").msg == "expected 1 or 32 (one per channel), got 3"


def test_batchnorm_on_a_batch_of_one_is_refused() -> None:
    layers = [{"type": "Linear", "out_features": 8}, {"type": "BatchNorm1d"}, {"type": "Linear", "out_features": 1}]
    report = errors_of(make_spec(layers, training={"batch_size": 16}), info(n_rows=33))  # last batch: 1 row
    assert "model.layers[1]" in the_issue(report.errors, "training.batch_size").msg
    assert check_spec(make_spec(layers, training={"batch_size": 16}), info(n_rows=34)).ok


# --- the last layer against the loss and the targets ---------------------------------------------------

CLASSIFIER: list[dict[str, Any]] = [
    {"type": "Linear", "out_features": 16},
    {"type": "ReLU"},
    {"type": "Linear", "out_features": 8},
    {"type": "ReLU"},
    {"type": "Linear", "out_features": 1},
]


def test_cross_entropy_needs_one_logit_per_class() -> None:
    report = errors_of(make_spec(CLASSIFIER, loss={"type": "CrossEntropyLoss"}), info(n_classes=3))
    assert the_issue(report.errors, "model.layers[4].out_features").msg == (
        "CrossEntropyLoss needs one logit per class: expected 3, got 1"
    )


def test_cross_entropy_needs_class_labels() -> None:
    report = errors_of(make_spec(CLASSIFIER, loss={"type": "CrossEntropyLoss"}), info(n_classes=None))
    assert the_issue(report.errors, "loss").msg.startswith("CrossEntropyLoss needs class labels as targets")


def test_nll_loss_width_and_class_weight_length() -> None:
    layers = CLASSIFIER[:-1] + [{"type": "Linear", "out_features": 3}, {"type": "LogSoftmax"}]
    spec = make_spec(layers, loss={"type": "NLLLoss", "weight": [1.0, 2.0]})
    report = errors_of(spec, info(n_classes=3))
    assert the_issue(report.errors, "loss.weight").msg == "expected 3 class weights, one per class, got 2"
    assert "model.layers[4].out_features" not in locs(report.errors)
    assert "model.layers[4].out_features" in locs(errors_of(spec, info(n_classes=4)).errors)


def test_conv_width_is_reported_at_out_channels_after_a_trivial_flatten() -> None:
    layers = [{"type": "Conv2d", "out_channels": 5, "kernel_size": 4}, {"type": "Flatten"}]
    report = errors_of(make_spec(layers, loss={"type": "CrossEntropyLoss"}), info((1, 4, 4), n_classes=3))
    assert "expected 3, got 5" in the_issue(report.errors, "model.layers[0].out_channels").msg


def test_width_error_falls_back_to_model_layers_when_no_layer_fixed_it() -> None:
    report = errors_of(make_spec([{"type": "ReLU"}]), info((4,), target_width=1))
    assert the_issue(report.errors, "model.layers").msg == "MSELoss needs one output per target column: expected 1, got 4"


def test_bce_width_and_pos_weight_length() -> None:
    spec = make_spec(CLASSIFIER, loss={"type": "BCEWithLogitsLoss", "pos_weight": [1.0, 2.0, 3.0]})
    report = errors_of(spec, info(target_width=2, n_classes=2))
    assert the_issue(report.errors, "model.layers[4].out_features").msg == (
        "BCEWithLogitsLoss needs one logit per target column: expected 2, got 1"
    )
    assert the_issue(report.errors, "loss.pos_weight").msg == "expected 2 values, one per target column, got 3"


def test_regression_width_must_equal_the_target_columns() -> None:
    report = errors_of(make_spec(CLASSIFIER, loss={"type": "L1Loss"}), info(target_width=3))
    assert the_issue(report.errors, "model.layers[4].out_features").msg == (
        "L1Loss needs one output per target column: expected 3, got 1"
    )


# --- caps ---------------------------------------------------------------------------------------------


def test_ten_thousand_layers_are_refused_at_model_layers_without_a_walk() -> None:
    spec = make_spec([{"type": "ReLU"}] * 10_000)
    report = errors_of(spec)
    assert locs(report.errors) == ["model.layers"]
    assert "10,000" in report.errors[0].msg and "256" in report.errors[0].msg
    assert report.layers == []


def test_parameter_cap_names_the_figure_and_nothing_is_allocated() -> None:
    layers = [{"type": "Linear", "out_features": 10**12}, {"type": "Linear", "out_features": 1}]
    report = errors_of(make_spec(layers))
    issue = the_issue(report.errors, "model")
    assert f"{report.total_params:,}" in issue.msg and "50,000,000" in issue.msg


def test_epoch_step_and_row_caps() -> None:
    limits = Limits(max_epochs=10, max_steps=50, max_rows=100)
    report = errors_of(make_spec(SEED_LAYERS, training={"epochs": 20, "batch_size": 16}), info(n_rows=64), limits)
    assert the_issue(report.errors, "training.epochs").msg == "20 epochs is more than the limit of 10"
    assert "80 optimizer steps" in report.errors[-1].msg and report.errors[-1].loc == "training.epochs"

    report = errors_of(make_spec(SEED_LAYERS, training={"epochs": None, "max_steps": 60}), info(n_rows=64), limits)
    assert the_issue(report.errors, "training.max_steps").msg == "60 optimizer steps is more than the limit of 50"

    report = errors_of(make_spec(SEED_LAYERS), info(n_rows=101), limits)
    assert the_issue(report.errors, "data").msg == "the data has 101 rows, more than the limit of 100"


# --- resource caps: memory, checkpoints, sizes --------------------------------------------------------

AVG_POOL_BOMB: dict[str, Any] = {  # issue 16: 2 parameters, 10 GB of data
    "layers": [{"type": "AvgPool1d", "kernel_size": 100_000}, {"type": "Flatten"}, {"type": "Linear", "out_features": 1}],
    "data": {"source": "synthetic", "kind": "regression", "n_samples": 25_000, "n_features": 100_000,
             "input_shape": [1, 100_000]},
}


def test_a_job_whose_data_outgrows_the_memory_cap_is_refused_at_data_without_allocating_it() -> None:
    spec = make_spec(AVG_POOL_BOMB["layers"], data=AVG_POOL_BOMB["data"])
    tracemalloc.start()
    try:
        report = errors_of(spec, info((1, 100_000), n_rows=25_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20  # the check reasons about 10 GB without holding any of it
    assert report.total_params == 2 and report.memory_bytes > 10_000_000_000
    issue = the_issue(report.errors, "data")
    assert f"{report.memory_bytes:,} bytes" in issue.msg and "the limit of 8,589,934,592 bytes" in issue.msg
    assert "data 10,000,100,000 bytes" in issue.msg


def test_memory_estimate_counts_the_data_rows_and_targets() -> None:
    small = check_spec(make_spec(SEED_LAYERS), info(n_rows=64)).memory_bytes
    large = check_spec(make_spec(SEED_LAYERS), info(n_rows=1064)).memory_bytes
    assert large - small == 1000 * (32 + 1) * 4  # float32 features and one float32 target per row


def test_activations_past_the_memory_cap_name_the_widest_layer() -> None:
    layers = [{"type": "Conv2d", "out_channels": 512, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
              {"type": "Flatten"}, {"type": "Linear", "out_features": 1}]
    data = info((1, 64, 64), n_rows=4096)
    spec = make_spec(layers, training={"batch_size": 4096})
    report = errors_of(spec, data, Limits(max_job_memory_bytes=2**30))
    issue = the_issue(report.errors, "model.layers[0]")
    assert "activations of one batch of 4,096" in issue.msg and "the limit of 1,073,741,824 bytes" in issue.msg
    assert check_spec(make_spec(layers, training={"batch_size": 8}), data, limits=Limits(max_job_memory_bytes=2**30)).ok


def test_keeping_too_many_checkpoints_is_refused_with_their_bytes() -> None:
    layers = [{"type": "Linear", "out_features": 10_000}, {"type": "Linear", "out_features": 1}]
    spec = make_spec(layers, training={"checkpoint": {"keep_last": 100_000}})
    report = errors_of(spec, info((4000,)))
    issue = the_issue(report.errors, "training.checkpoint.keep_last")
    per_checkpoint = report.total_params * 4 * 3  # weights and Adam's two moments
    assert f"{per_checkpoint:,} bytes" in issue.msg and f"{per_checkpoint * 100_001:,} bytes" in issue.msg
    assert check_spec(make_spec(layers, training={"checkpoint": {"keep_last": 3}}), info((4000,))).ok


@pytest.mark.parametrize(
    ("data", "layers", "loc", "figure"),
    [
        ({"source": "synthetic", "n_features": 100_001}, SEED_LAYERS, "data.n_features", "100,001"),
        ({"source": "synthetic", "n_targets": 10_001}, SEED_LAYERS, "data.n_targets", "10,001"),
        ({"source": "synthetic", "n_features": 64, "input_shape": [1, 64]},
         [{"type": "Conv1d", "out_channels": 1, "kernel_size": 3, "padding": [2000]}, {"type": "Flatten"},
          {"type": "Linear", "out_features": 1}], "model.layers[0].padding", "2,000"),
    ],
)
def test_synthetic_sizes_and_conv_padding_have_caps(data: dict[str, Any], layers: list[Any], loc: str,
                                                     figure: str) -> None:
    spec = make_spec(layers, data=data)
    report = check_spec(spec, info())
    assert figure in the_issue(report.errors, loc).msg and not report.ok


def test_every_cap_is_a_setting() -> None:
    settings = Settings(max_job_memory_bytes=123, max_checkpoint_bytes_per_job=456, max_synthetic_features=7,
                        max_synthetic_targets=8, max_conv_padding=9)
    limits = Limits.from_settings(settings)
    assert (limits.max_job_memory_bytes, limits.max_checkpoint_bytes_per_job, limits.max_synthetic_features,
            limits.max_synthetic_targets, limits.max_conv_padding) == (123, 456, 7, 8, 9)


def test_post_jobs_refuses_a_job_past_the_memory_cap_with_422_naming_the_figure(embedded_server: LiveServer) -> None:
    spec = {**SEED_EXAMPLE, "model": {"layers": AVG_POOL_BOMB["layers"]}, "data": AVG_POOL_BOMB["data"]}
    with embedded_server.client() as client:
        response = client.post("/jobs", json=spec)
        assert response.status_code == 422, response.text
        errors = {error["loc"]: error["msg"] for error in response.json()["errors"]}
        assert "the limit of 8,589,934,592 bytes" in errors["data"]
        report = client.post("/jobs/validate", json=spec).json()
        assert not report["ok"] and report["memory_bytes"] > 10_000_000_000


# --- training settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("training", "scheduler", "loc"),
    [
        ({"early_stopping": {"monitor": "val_loss"}}, None, "training.early_stopping.monitor"),
        ({"checkpoint": {"monitor": "val_mae"}}, None, "training.checkpoint.monitor"),
        ({}, {"type": "ReduceLROnPlateau"}, "scheduler.monitor"),
    ],
)
def test_validation_metrics_need_validation_data(
    training: dict[str, Any], scheduler: dict[str, Any] | None, loc: str
) -> None:
    report = errors_of(make_spec(SEED_LAYERS, training=training, scheduler=scheduler))
    assert "needs validation data" in the_issue(report.errors, loc).msg

    training = {**training, "validation_split": 0.25}
    assert check_spec(make_spec(SEED_LAYERS, training=training, scheduler=scheduler), info()).ok


def test_validation_dataset_counts_as_validation_data() -> None:
    data = {"source": "dataset", "dataset_id": "abc", "validation_dataset_id": "def"}
    spec = make_spec(SEED_LAYERS, training={"early_stopping": {"monitor": "val_r2", "mode": "max"}}, data=data)
    assert check_spec(spec, info()).ok


def test_monitor_names_are_checked_against_the_task() -> None:
    training = {"validation_split": 0.25, "early_stopping": {"monitor": "val_accuracy", "mode": "max"}}
    report = errors_of(make_spec(SEED_LAYERS, training=training))
    assert "only computed for" in the_issue(report.errors, "training.early_stopping.monitor").msg

    training = {"validation_split": 0.25, "checkpoint": {"monitor": "val_acc"}}
    report = errors_of(make_spec(SEED_LAYERS, training=training))
    assert "unknown metric 'val_acc'" in the_issue(report.errors, "training.checkpoint.monitor").msg

    layers = CLASSIFIER[:-1] + [{"type": "Linear", "out_features": 3}]
    training = {"validation_split": 0.25, "early_stopping": {"monitor": "val_accuracy", "mode": "min"}}
    report = check_spec(make_spec(layers, loss={"type": "CrossEntropyLoss"}, training=training), info(n_classes=3))
    assert report.ok, report.errors
    assert "'max'" in the_issue(report.warnings, "training.early_stopping.mode").msg


def test_validation_split_that_leaves_no_validation_rows() -> None:
    report = errors_of(make_spec(SEED_LAYERS, training={"validation_split": 0.01}), info(n_rows=50))
    assert "0 validation rows" in the_issue(report.errors, "training.validation_split").msg


def test_bf16_mixed_is_refused_on_cpu() -> None:
    report = errors_of(make_spec(SEED_LAYERS, training={"precision": "bf16-mixed", "device": "cpu"}))
    assert "CUDA" in the_issue(report.errors, "training.precision").msg
    assert check_spec(make_spec(SEED_LAYERS, training={"precision": "bf16-mixed", "device": "cuda"}), info()).ok


# --- warnings -----------------------------------------------------------------------------------------


def test_sigmoid_before_bce_with_logits_is_a_warning() -> None:
    spec = make_spec(CLASSIFIER + [{"type": "Sigmoid"}], loss={"type": "BCEWithLogitsLoss"})
    report = check_spec(spec, info(n_classes=2))
    assert report.ok
    assert the_issue(report.warnings, "model.layers[5]").msg == (
        "BCEWithLogitsLoss already applies the sigmoid; remove this layer"
    )


@pytest.mark.parametrize("last", ["Softmax", "LogSoftmax"])
def test_softmax_before_cross_entropy_is_a_warning(last: str) -> None:
    layers = CLASSIFIER[:-1] + [{"type": "Linear", "out_features": 3}, {"type": last}]
    report = check_spec(make_spec(layers, loss={"type": "CrossEntropyLoss"}), info(n_classes=3))
    assert report.ok
    assert "CrossEntropyLoss already applies" in the_issue(report.warnings, "model.layers[5]").msg


def test_nll_loss_without_log_softmax_is_a_warning() -> None:
    layers = CLASSIFIER[:-1] + [{"type": "Linear", "out_features": 3}]
    report = check_spec(make_spec(layers, loss={"type": "NLLLoss"}), info(n_classes=3))
    assert report.ok
    assert "LogSoftmax" in the_issue(report.warnings, "model.layers").msg


@pytest.mark.parametrize("lr", [2.0, 1e-7])
def test_unusual_learning_rate_is_a_warning(lr: float) -> None:
    report = check_spec(make_spec(SEED_LAYERS, optimizer={"type": "SGD", "lr": lr}), info())
    assert report.ok and locs(report.warnings) == ["optimizer.lr"]


def test_unnormalized_inputs_warn_unless_normalize_is_on() -> None:
    assert locs(check_spec(make_spec(SEED_LAYERS), info(looks_unnormalized=True)).warnings) == ["training.normalize"]
    assert check_spec(make_spec(SEED_LAYERS, training={"normalize": True}), info(looks_unnormalized=True)).warnings == []


def test_batch_larger_than_the_training_rows_is_a_warning() -> None:
    report = check_spec(make_spec(SEED_LAYERS, training={"batch_size": 128}), info(n_rows=100))
    assert report.ok
    assert "100 training rows" in the_issue(report.warnings, "training.batch_size").msg


def test_a_clean_spec_has_no_warnings() -> None:
    report = check_spec(make_spec(SEED_LAYERS), info())
    assert report.ok and report.errors == [] and report.warnings == []


# --- the check agrees with PyTorch on random stacks ----------------------------------------------------


def random_layer(rng: random.Random, rank: int) -> dict[str, Any]:
    def size(lo: int, hi: int) -> int | list[int]:
        return rng.randint(lo, hi) if rng.random() < 0.7 else [rng.randint(lo, hi) for _ in range(rng.choice([1, 2]))]

    kind = rng.choice(
        ["Linear", "Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "Flatten", "BatchNorm1d",
         "BatchNorm2d", "LayerNorm", "PReLU", "ReLU", "Softmax", "Dropout"]
    )
    if kind == "Linear":
        return {"type": kind, "out_features": rng.randint(1, 6)}
    if kind.startswith("Conv"):
        layer: dict[str, Any] = {
            "type": kind, "out_channels": rng.choice([1, 2, 4]), "kernel_size": size(1, 4), "stride": size(1, 2),
            "dilation": size(1, 2), "groups": rng.choice([1, 1, 2]),
        }
        layer["padding"] = rng.choice(["same", "valid", rng.randint(0, 2), [rng.randint(0, 2)]])
        return layer
    if "Pool" in kind:
        layer = {"type": kind, "kernel_size": size(1, 3), "padding": rng.randint(0, 2), "ceil_mode": rng.random() < 0.5}
        if rng.random() < 0.5:
            layer["stride"] = size(1, 3)
        if kind.startswith("Max"):
            layer["dilation"] = rng.randint(1, 2)
        return layer
    if kind == "Flatten":
        return {"type": kind, "start_dim": rng.choice([1, 1, 2, -2]), "end_dim": rng.choice([-1, -1, 2, 3])}
    if kind == "PReLU":
        return {"type": kind, "num_parameters": rng.choice([1, rng.randint(1, 4)])}
    if kind == "Softmax":
        return {"type": kind, "dim": rng.randint(-3, 3)}
    return {"type": kind}


def reference_failure(layers: list[dict[str, Any]], shape: tuple[int, ...]) -> tuple[int | None, list[list[int]]]:
    """Run the stack in PyTorch, sizing each layer from the real tensor: the index of the first layer that fails."""
    x = torch.randn(3, *shape)
    shapes: list[list[int]] = []
    batched_rank = {"Conv1d": (3,), "Conv2d": (4,), "MaxPool1d": (3,), "AvgPool1d": (3,), "MaxPool2d": (4,),
                    "AvgPool2d": (4,), "BatchNorm1d": (2, 3), "BatchNorm2d": (4,)}
    for index, raw in enumerate(layers):
        spec_layer = dict(raw)
        kind = spec_layer.pop("type")
        for key in ("kernel_size", "stride", "padding", "dilation"):
            if isinstance(spec_layer.get(key), list):
                value = spec_layer[key]
                n = 1 if kind.endswith("1d") else 2
                spec_layer[key] = tuple(value * n if len(value) == 1 else value)
        try:
            if kind in batched_rank and x.dim() not in batched_rank[kind]:
                raise RuntimeError("wrong rank for batched input")
            if kind == "Linear":
                module: nn.Module = nn.Linear(x.shape[-1], **spec_layer)
            elif kind.startswith("Conv"):
                module = getattr(nn, kind)(x.shape[1], **spec_layer)
            elif kind.startswith("BatchNorm"):
                module = getattr(nn, kind)(x.shape[1])
            elif kind == "LayerNorm":
                module = nn.LayerNorm(x.shape[-1])
            else:
                module = getattr(nn, kind)(**spec_layer)
            if kind == "Flatten" and spec_layer["start_dim"] % x.dim() == 0 and spec_layer["end_dim"] % x.dim() > 0:
                raise RuntimeError("merging the batch dim is refused on purpose")
            if kind == "PReLU" and spec_layer["num_parameters"] != 1 and (x.dim() < 2 or x.shape[1] != spec_layer[
                    "num_parameters"]):
                raise RuntimeError("PReLU channels")
            x = module(x)
        except (RuntimeError, ValueError, IndexError, TypeError):  # how PyTorch refuses a shape or argument
            return index, shapes
        shapes.append(list(x.shape[1:]))
    return None, shapes


def test_the_static_check_agrees_with_pytorch_on_random_stacks() -> None:
    rng = random.Random(1234)
    agreed_ok = agreed_fail = 0
    for _ in range(300):
        shape = tuple(rng.randint(1, 7) for _ in range(rng.randint(1, 3)))
        layers = [random_layer(rng, len(shape)) for _ in range(rng.randint(1, 4))]
        spec = make_spec(layers)
        report = check_spec(spec, info(shape))
        failed_at, real_shapes = reference_failure(layers, shape)
        context = f"shape={shape} layers={layers} errors={report.errors}"
        try:
            model = build_model(spec, shape)
        except ShapeError as refused:
            assert failed_at is not None, context
            assert all(issue in report.errors for issue in refused.issues), context  # the check reports it too
            first = min(int(issue.loc.split("[")[1].split("]")[0]) for issue in refused.issues)
            assert first == failed_at, context
            agreed_fail += 1
            continue
        assert failed_at is None, context
        assert [layer.output_shape for layer in report.layers] == real_shapes, context
        assert [layer.params for layer in report.layers] == [n_params(m) for m in model], context
        agreed_ok += 1
    assert agreed_ok > 30 and agreed_fail > 30  # the generator exercises both sides


def test_a_checkpoint_larger_than_the_database_stores_in_a_row_is_refused_before_training() -> None:
    """A cap an operator raised (max_parameters) can admit a model whose one checkpoint the database cannot store
    (SQLite: 1,000,000,000 bytes a row; PostgreSQL: 1 GiB): refused by the check, not at the first checkpoint."""
    layers = [{"type": "Linear", "out_features": 22_500}, {"type": "Linear", "out_features": 1}]  # 90,045,001
    limits = Limits(max_parameters=100_000_000)
    adam = check_spec(make_spec(layers), info((4000,)), limits=limits)
    per_checkpoint = adam.total_params * 4 * 3  # weights and Adam's two moments: 1,080,540,012 bytes
    issue = the_issue(adam.errors, "model")
    assert f"{per_checkpoint:,} bytes" in issue.msg and "2 optimizer value(s)" in issue.msg
    assert "the database can store as one checkpoint" in issue.msg
    # Plain SGD keeps no state: the weights alone (360 MB) fit, and nothing else stands in the way.
    assert check_spec(make_spec(layers, optimizer={"type": "SGD", "lr": 0.1}), info((4000,)), limits=limits).ok
