"""The SDK's spec builders cannot drift from the server's spec language silently.

Walks the server's layer, loss, optimizer, scheduler and data-source unions (and the training parts and the
whole spec) and fails when ``trainserve.spec`` lacks a type, an argument, or one of an argument's named values;
each builder, given every argument the server knows, renders a dict the server's own model accepts.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

import trainserve.spec as sdk
from service import spec as server

UNIONS: dict[str, Any] = {
    "layer": server.Layer,
    "loss": server.Loss,
    "optimizer": server.Optimizer,
    "scheduler": server.Scheduler,
    "data source": server.DataSource,
}
TAG_FIELDS = ("type", "source")
# Values for arguments the server requires and gives no default for.
REQUIRED: dict[str, Any] = {
    "out_features": 4, "out_channels": 4, "kernel_size": 3, "step_size": 2, "gamma": 0.5, "max_lr": 0.1,
    "dataset_id": "ds_1", "name": "iris", "x": [[1.0]], "y": [1.0],
}


def union_members(annotated: Any) -> list[type[BaseModel]]:
    union = get_args(annotated)[0]  # Annotated[Union[...], Field(discriminator=...)]
    return list(get_args(union))


def tag_of(model: type[BaseModel]) -> tuple[str, str]:
    for key in TAG_FIELDS:
        if key in model.model_fields:
            (value,) = get_args(model.model_fields[key].annotation)
            return key, value
    raise AssertionError(f"{model.__name__} has no tag field")


def sdk_builders() -> dict[tuple[str, str], type[sdk.SpecPart]]:
    found: dict[tuple[str, str], type[sdk.SpecPart]] = {}
    for obj in vars(sdk).values():
        if inspect.isclass(obj) and issubclass(obj, sdk.SpecPart) and obj.tag_key is not None:
            found.setdefault((obj.tag_key, obj.tag or obj.__name__), obj)
    return found


def sdk_parameters(builder: type[sdk.SpecPart]) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(builder.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def literal_values(annotation: Any) -> set[Any]:
    """Every value a Literal anywhere inside the annotation names (through Optional, Union, Annotated, list)."""
    if get_origin(annotation) is Literal:
        return set(get_args(annotation))
    values: set[Any] = set()
    for arg in get_args(annotation):
        values |= literal_values(arg)
    return values


def a_value(field: Any, name: str) -> Any:
    """A valid value for a server field: its default, else one from REQUIRED; None: leave it out."""
    if name in REQUIRED:
        return REQUIRED[name]
    if field.default is PydanticUndefined or field.default is None:
        return None
    return field.default


SERVER_PARTS = [(kind, model) for kind, union in UNIONS.items() for model in union_members(union)]


@pytest.mark.parametrize(("kind", "model"), SERVER_PARTS, ids=[model.__name__ for _, model in SERVER_PARTS])
def test_the_sdk_builds_every_server_type_with_every_argument(kind: str, model: type[BaseModel]) -> None:
    key, tag = tag_of(model)
    builder = sdk_builders().get((key, tag))
    assert builder is not None, f"trainserve.spec has no builder for the {kind} {tag!r}"
    params = sdk_parameters(builder)
    fields = {name: f for name, f in model.model_fields.items() if name != key}
    missing = sorted(set(fields) - set(params))
    assert not missing, f"trainserve.spec.{builder.__name__} lacks {missing} (the server's {tag} takes them)"
    hints = typing.get_type_hints(builder.__init__)
    for name, field in fields.items():
        lacking = literal_values(field.annotation) - literal_values(hints.get(name, Any))
        assert not lacking or not literal_values(hints.get(name, Any)), (
            f"trainserve.spec.{builder.__name__}({name}=...) does not name {sorted(map(str, lacking))}")

    given = {name: value for name, f in fields.items() if (value := a_value(f, name)) is not None}
    rendered = builder(**given).to_dict()
    assert {k: rendered[k] for k in given} == {k: sdk.to_jsonable(v) for k, v in given.items()}
    model.model_validate(rendered)  # the server reads what the SDK writes


@pytest.mark.parametrize(("model", "builder"), [
    (server.Training, sdk.Training),
    (server.EarlyStopping, sdk.EarlyStopping),
    (server.CheckpointPolicy, sdk.CheckpointPolicy),
])
def test_the_sdk_takes_every_training_argument(model: type[BaseModel], builder: type[sdk.SpecPart]) -> None:
    missing = sorted(set(model.model_fields) - set(sdk_parameters(builder)))
    assert not missing, f"trainserve.spec.{builder.__name__} lacks {missing}"
    hints = typing.get_type_hints(builder.__init__)
    for name, field in model.model_fields.items():
        assert literal_values(field.annotation) <= literal_values(hints[name]) or not literal_values(hints[name]), name
    given = {name: value for name, f in model.model_fields.items() if (value := a_value(f, name)) is not None}
    model.model_validate(builder(**given).to_dict())


def test_the_whole_spec_takes_every_top_level_field() -> None:
    spec_fields = set(server.JobSpec.model_fields) - {"model"} | set(server.ModelSpec.model_fields)
    missing = sorted(spec_fields - set(sdk_parameters(sdk.Spec)))
    assert not missing, f"trainserve.spec.Spec lacks {missing}"
    built = sdk.Spec(name="seed-mlp", layers=[sdk.Linear(32, 64), sdk.ReLU(), sdk.Linear(32), sdk.ReLU(), sdk.Linear(1)],
                     loss=sdk.MSELoss(), optimizer=sdk.Adam(lr=0.001),
                     training=sdk.Training(100, batch_size=128, seed=0, log_every_steps=1),
                     data=sdk.SyntheticData("randn", n_samples=128, n_features=32, n_targets=1))
    assert built.to_dict() == server.SEED_EXAMPLE
    server.JobSpec.model_validate(built.to_dict())


def test_every_tagged_part_of_the_spec_is_walked() -> None:
    # TAG_NAMES holds every discriminator value of the server's unions: a tag outside UNIONS would go unchecked.
    assert {tag_of(model)[1] for _, model in SERVER_PARTS} == set(server.TAG_NAMES)
