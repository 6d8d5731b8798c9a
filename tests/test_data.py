"""A job's data: the static description agrees with what the worker loads, uploads parse and round-trip,
generators are reproducible, normalization uses training rows only, and every bad input names its place."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from service.datainfo import DataInfo, DataSpecError, describe_data, features_look_unnormalized
from service.errors import SpecError
from service.inputs import parse_inputs, prepare_inputs
from service.spec import SEED_EXAMPLE, JobSpec
from service.tabular import Table, TableError, parse_table
from worker.data import TrainData, load_data


def make_spec(data: dict[str, Any], *, loss: str = "MSELoss", **training: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"layers": [{"type": "Linear", "out_features": 1}]},
            "loss": {"type": loss},
            "optimizer": {"type": "SGD", "lr": 0.1},
            "training": {"epochs": 1, **training},
            "data": data,
        }
    )


def assert_agrees(info: DataInfo, loaded: TrainData) -> None:
    """The static check's figures are exactly what the worker hands to the engine."""
    n_val = 0 if loaded.x_val is None else loaded.x_val.shape[0]
    assert loaded.x_train.shape[0] + n_val == info.n_rows
    assert tuple(loaded.x_train.shape[1:]) == info.input_shape
    assert loaded.x_train.dtype == torch.float32
    if loaded.task == "classification":
        assert loaded.classes is not None and len(loaded.classes) == info.n_classes
        assert loaded.y_train.dtype == torch.int64 and loaded.y_train.ndim == 1
        assert int(loaded.y_train.min()) >= 0 and int(loaded.y_train.max()) < len(loaded.classes)
        assert info.target_width == 1
    else:
        assert loaded.y_train.dtype == torch.float32
        assert loaded.y_train.shape == (loaded.x_train.shape[0], info.target_width)
        assert info.n_classes == (info.target_width if loaded.task == "binary" else None)


CSV_WITH_TEXT_TARGET = b"""sepal,petal,width,species
5.1,1.4,0.2,setosa
4.9,1.4,0.2,setosa
7.0,4.7,1.4,versicolor
6.4,4.5,1.5,versicolor
6.3,6.0,2.5,virginica
5.8,5.1,1.9,virginica
"""


def csv_table(raw: bytes = CSV_WITH_TEXT_TARGET, target: str = "species") -> Table:
    return parse_table(raw, filename="flowers.csv", target=[target], max_rows=1000)


# --- describe_data and load_data agree -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "loss"),
    [
        ({"source": "inline", "x": [[0, 0], [0, 1], [1, 0], [1, 1]], "y": [[0], [1], [1], [0]]}, "MSELoss"),
        ({"source": "inline", "x": [[0, 0], [0, 1], [1, 0], [1, 1]], "y": [0, 1, 1, 0]}, "BCEWithLogitsLoss"),
        ({"source": "inline", "x": [[1, 2], [3, 4], [5, 6]], "y": ["cat", "dog", "cat"]}, "CrossEntropyLoss"),
        ({"source": "inline", "x": [[1, 2, 3, 4]] * 3, "y": [1, 2, 3], "input_shape": [1, 2, 2]}, "NLLLoss"),
        ({"source": "inline", "x": [[[1, 2], [3, 4]]] * 2, "y": [[1.0, 2.0], [3.0, 4.0]]}, "L1Loss"),
        ({"source": "synthetic", "kind": "randn", "n_samples": 20, "n_features": 3, "n_targets": 2}, "MSELoss"),
        ({"source": "synthetic", "kind": "regression", "n_samples": 20, "n_features": 3}, "HuberLoss"),
        ({"source": "synthetic", "kind": "classification", "n_samples": 30, "n_classes": 4}, "CrossEntropyLoss"),
        ({"source": "synthetic", "kind": "moons", "n_samples": 30, "n_features": 7}, "CrossEntropyLoss"),
        ({"source": "synthetic", "kind": "moons", "n_samples": 30}, "BCEWithLogitsLoss"),
        ({"source": "builtin", "name": "iris"}, "CrossEntropyLoss"),
        ({"source": "builtin", "name": "wine"}, "CrossEntropyLoss"),
        ({"source": "builtin", "name": "breast_cancer"}, "BCEWithLogitsLoss"),
        ({"source": "builtin", "name": "digits", "input_shape": [1, 8, 8]}, "CrossEntropyLoss"),
        ({"source": "builtin", "name": "diabetes"}, "MSELoss"),
    ],
)
def test_loaded_tensors_match_the_static_description(data: dict[str, Any], loss: str) -> None:
    spec = make_spec(data, loss=loss, validation_split=0.2)
    assert_agrees(describe_data(spec), load_data(spec))


@pytest.mark.parametrize(
    ("name", "n_rows", "n_features", "n_classes"),
    [("iris", 150, 4, 3), ("wine", 178, 13, 3), ("breast_cancer", 569, 30, 2), ("digits", 1797, 64, 10)],
)
def test_builtin_classifiers_are_described_without_loading(
    name: str, n_rows: int, n_features: int, n_classes: int
) -> None:
    info = describe_data(make_spec({"source": "builtin", "name": name}, loss="CrossEntropyLoss"))
    assert (info.n_rows, info.input_shape, info.n_classes, info.target_width) == (
        n_rows,
        (n_features,),
        n_classes,
        1,
    )
    loaded = load_data(make_spec({"source": "builtin", "name": name}, loss="CrossEntropyLoss"))
    flat = loaded.x_train.double()
    measured = features_look_unnormalized(flat.mean(0).tolist(), flat.std(0, correction=0).tolist(), n_rows=n_rows)
    assert info.looks_unnormalized == measured


def test_builtin_class_names_are_the_target_names() -> None:
    loaded = load_data(make_spec({"source": "builtin", "name": "iris"}, loss="CrossEntropyLoss"))
    assert loaded.classes == ["setosa", "versicolor", "virginica"]
    digits = load_data(make_spec({"source": "builtin", "name": "digits"}, loss="CrossEntropyLoss"))
    assert digits.classes == [str(i) for i in range(10)]


def test_diabetes_is_a_regression_set() -> None:
    info = describe_data(make_spec({"source": "builtin", "name": "diabetes"}))
    assert (info.n_rows, info.input_shape, info.target_width, info.n_classes) == (442, (10,), 1, None)
    y = load_data(make_spec({"source": "builtin", "name": "diabetes"})).y_train
    assert 20 < float(y.min()) < 30 and 340 < float(y.max()) < 350


def test_digits_pixels_look_unnormalized_and_randn_does_not() -> None:
    assert describe_data(make_spec({"source": "builtin", "name": "digits"})).looks_unnormalized
    assert not describe_data(make_spec({"source": "synthetic", "n_samples": 50})).looks_unnormalized
    inline = {"source": "inline", "x": [[100.0, 1.0], [300.0, 2.0], [200.0, 0.0]], "y": [1, 2, 3]}
    assert describe_data(make_spec(inline)).looks_unnormalized


def test_dataset_table_loads_with_the_described_shapes() -> None:
    table = csv_table()
    spec = make_spec({"source": "dataset", "dataset_id": "ds1"}, loss="CrossEntropyLoss")
    info = describe_data(spec, dataset=table.description)
    assert (info.n_rows, info.input_shape, info.n_classes) == (6, (3,), 3)
    loaded = load_data(spec, dataset_loader={"ds1": table}.__getitem__)
    assert_agrees(info, loaded)
    assert loaded.classes == ["setosa", "versicolor", "virginica"]
    assert loaded.y_train.tolist() == [0, 0, 1, 1, 2, 2]


def test_dataset_regression_on_chosen_feature_and_target_columns() -> None:
    table = csv_table()
    data = {"source": "dataset", "dataset_id": "d", "features": ["sepal", "petal"], "target": ["width"]}
    spec = make_spec(data)
    info = describe_data(spec, dataset=table.description)
    loaded = load_data(spec, dataset_loader=lambda _id: table)
    assert_agrees(info, loaded)
    assert loaded.x_train[:, 0].tolist() == pytest.approx([5.1, 4.9, 7.0, 6.4, 6.3, 5.8])
    assert loaded.y_train[:, 0].tolist() == pytest.approx([0.2, 0.2, 1.4, 1.5, 2.5, 1.9])


def test_validation_dataset_is_loaded_instead_of_a_split() -> None:
    train = csv_table()
    val = csv_table(b"sepal,petal,width,species\n6.0,5.0,1.8,virginica\n5.0,1.5,0.3,setosa\n")
    spec = make_spec({"source": "dataset", "dataset_id": "t", "validation_dataset_id": "v"}, loss="CrossEntropyLoss")
    loaded = load_data(spec, dataset_loader={"t": train, "v": val}.__getitem__)
    assert loaded.x_train.shape == (6, 3)
    assert loaded.x_val is not None and loaded.x_val.shape == (2, 3)
    # The validation file's own codes are virginica=1, setosa=0; labels map by name onto the training classes.
    assert loaded.y_val is not None and loaded.y_val.tolist() == [2, 0]


# --- generators and splits --------------------------------------------------------------------------------


def test_randn_reproduces_the_seed_article_recipe_bit_for_bit() -> None:
    loaded = load_data(JobSpec.model_validate(SEED_EXAMPLE))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 32, generator=g)
    y = torch.randn(128, 1, generator=g)
    assert torch.equal(loaded.x_train, x) and torch.equal(loaded.y_train, y)
    assert loaded.x_val is None and loaded.mean is None


def test_data_seed_overrides_the_training_seed() -> None:
    data = {"source": "synthetic", "kind": "randn", "n_samples": 8, "n_features": 3, "seed": 7}
    loaded = load_data(make_spec(data, seed=123))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(loaded.x_train, torch.randn(8, 3, generator=g))


@pytest.mark.parametrize("kind", ["regression", "classification", "moons"])
def test_other_synthetic_kinds_are_seeded(kind: str) -> None:
    loss = "MSELoss" if kind == "regression" else "CrossEntropyLoss"
    data = {"source": "synthetic", "kind": kind, "n_samples": 40, "n_features": 3}
    first, again = load_data(make_spec(data, loss=loss, seed=1)), load_data(make_spec(data, loss=loss, seed=1))
    other = load_data(make_spec(data, loss=loss, seed=2))
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_train, again.y_train)
    assert not torch.equal(first.x_train, other.x_train)


def test_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    data = {"source": "synthetic", "kind": "randn", "n_samples": 50, "n_features": 2, "seed": 3}

    def val_rows(seed: int) -> torch.Tensor:
        loaded = load_data(make_spec(data, seed=seed, validation_split=0.2))
        assert loaded.x_val is not None and loaded.x_val.shape[0] == 10 and loaded.x_train.shape[0] == 40
        return loaded.x_val

    assert torch.equal(val_rows(1), val_rows(1))
    assert not torch.equal(val_rows(1), val_rows(2))
    # The validation rows are the ones the documented permutation draws.
    full = load_data(make_spec(data, seed=1)).x_train
    chosen = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:10].sort().values
    assert torch.equal(val_rows(1), full[chosen])


# --- normalization ------------------------------------------------------------------------------------


def test_normalization_uses_training_rows_only_and_predict_reproduces_it() -> None:
    data = {"source": "synthetic", "kind": "regression", "n_samples": 40, "n_features": 3}
    raw = load_data(make_spec(data, validation_split=0.25))
    norm = load_data(make_spec(data, validation_split=0.25, normalize=True))
    assert raw.x_val is not None and norm.x_val is not None and norm.mean is not None and norm.std is not None
    expected_mean = raw.x_train.double().mean(0).float()
    expected_std = raw.x_train.double().std(0, correction=0).float()
    assert torch.equal(norm.mean, expected_mean) and torch.equal(norm.std, expected_std)
    all_rows = torch.cat([raw.x_train, raw.x_val]).double().mean(0).float()
    assert not torch.allclose(norm.mean, all_rows)
    assert norm.x_train.mean(0).abs().max() < 1e-5
    assert torch.allclose(norm.x_train.std(0, correction=0), torch.ones(3), atol=1e-5)
    # What /predict does with rows a user sends: parse them, then normalize and reshape.
    rows = parse_inputs(raw.x_val.tolist(), input_shape=(3,), max_rows=1000)
    replayed = prepare_inputs(rows, mean=norm.mean, std=norm.std, input_shape=(3,))
    assert torch.equal(replayed, norm.x_val)


def test_normalize_then_reshape_for_images_and_predict_replays_both() -> None:
    data = {"source": "builtin", "name": "digits", "input_shape": [1, 8, 8]}
    raw = load_data(make_spec(data, loss="CrossEntropyLoss", validation_split=0.1))
    norm = load_data(make_spec(data, loss="CrossEntropyLoss", validation_split=0.1, normalize=True))
    assert norm.mean is not None and norm.std is not None
    assert norm.mean.shape == (64,) and norm.x_train.shape[1:] == (1, 8, 8)
    # The top-left pixel is always 0: its std is 1, not a division by zero.
    assert float(norm.mean[0]) == 0.0 and float(norm.std[0]) == 1.0
    assert bool(torch.isfinite(norm.x_train).all())
    assert raw.x_val is not None and norm.x_val is not None
    for rows in (raw.x_val.reshape(raw.x_val.shape[0], 64).tolist(), raw.x_val.tolist()):  # flat or as images
        parsed = parse_inputs(rows, input_shape=(1, 8, 8), max_rows=1000)
        assert torch.equal(prepare_inputs(parsed, mean=norm.mean, std=norm.std, input_shape=(1, 8, 8)), norm.x_val)


def test_predict_inputs_refuse_rows_of_the_wrong_width_with_their_path() -> None:
    with pytest.raises(SpecError) as err:
        parse_inputs([[1.0, 2.0, 3.0], [1.0, 2.0]], input_shape=(3,), max_rows=10)
    assert err.value.errors == [{"loc": "inputs[1]", "msg": "expected 3 values, got 2"}]


# --- uploads -----------------------------------------------------------------------------------------


def assert_round_trips(table: Table) -> None:
    back = Table.from_bytes(table.to_bytes())
    assert back.description == table.description
    assert list(back.columns) == list(table.columns)
    for name, column in table.columns.items():
        assert back.columns[name].dtype == column.dtype
        assert np.array_equal(back.columns[name], column)


def test_csv_with_a_text_target_round_trips() -> None:
    table = csv_table()
    desc = table.description
    assert desc.n_rows == 6 and desc.target == ["species"]
    assert [(c.name, c.dtype) for c in desc.columns] == [
        ("sepal", "float64"),
        ("petal", "float64"),
        ("width", "float64"),
        ("species", "category"),
    ]
    species = desc.columns[3]
    assert species.categories == ["setosa", "versicolor", "virginica"] and species.n_unique == 3
    assert species.mean is None and table.columns["species"].tolist() == [0, 0, 1, 1, 2, 2]
    assert desc.columns[0].mean == pytest.approx(np.mean([5.1, 4.9, 7.0, 6.4, 6.3, 5.8]))
    assert_round_trips(table)
    assert type(desc).from_json(desc.to_json()) == desc


def test_parquet_round_trips_and_is_detected_by_its_magic_bytes() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "flag": [True, False, True], "y": ["u", "v", "u"]})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    table = parse_table(buffer.getvalue(), filename="upload.bin", target=["y"], max_rows=10)
    dtypes = {c.name: c.dtype for c in table.description.columns}
    assert dtypes == {"a": "int64", "b": "float64", "flag": "bool", "y": "category"}
    assert table.columns["a"].dtype == np.int64 and table.columns["a"].tolist() == [1, 2, 3]
    assert_round_trips(table)


def test_npz_splits_a_2d_array_into_columns_and_round_trips() -> None:
    buffer = io.BytesIO()
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(buffer, x=x, y=np.array([0, 1, 0, 1]))
    table = parse_table(buffer.getvalue(), filename="data.npz", target=["y"], max_rows=10)
    assert [c.name for c in table.description.columns] == ["x0", "x1", "x2", "y"]
    assert table.columns["x1"].dtype == np.float64 and table.columns["x1"].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert table.columns["y"].dtype == np.int64
    assert_round_trips(table)
    spec = make_spec({"source": "dataset", "dataset_id": "n"}, loss="CrossEntropyLoss")
    assert_agrees(describe_data(spec, dataset=table.description), load_data(spec, dataset_loader=lambda _: table))


def ragged_npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(3), b=np.zeros(4))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("raw", "filename", "target", "loc", "message"),
    [
        (b"", "a.csv", ["y"], "file", "empty"),
        (b"a,y\n", "a.csv", ["y"], "file", "no rows"),
        (b"a,y\n1,2\n3,4\n", "a.csv", ["price"], "target", "no column named 'price'; the columns are: a, y"),
        (b"a,y\n1,2\n,4\n5,\n6,\n", "a.csv", ["y"], "file: line 3", "column 'a' has 1 missing value"),
        (b"a,y\n1,2\n2,\n3,\n", "a.csv", ["y"], "file: line 3", "column 'y' has 2 missing value"),
        (b"a,y\n1,2\ninf,4\n", "a.csv", ["y"], "file: line 3", "column 'a' has 1 infinite value"),
        (b"a,y\n1,2\n3,4,5\n", "a.csv", ["y"], "file: line 3", "not a valid CSV file"),
        (b"1,2\n3,4\n", "a.csv", ["1"], "file: line 1", "header"),
        (b"a,y\n" + b"1,2\n" * 6, "a.csv", ["y"], "file", "more than 5 rows, the limit is 5"),
        (ragged_npz(), "a.npz", ["a"], "file", "different numbers of rows (a: 3, b: 4)"),
        (b"PAR1 not really parquet", "a.parquet", ["y"], "file", "not a valid Parquet file"),
        (b"a,y\n1,2\n", "a.csv", ["a", "y"], "target", "at least one feature column"),
        (b"a,a,y\n1,2,3\n", "a.csv", ["y"], "file: line 1", "names 'a' more than once"),
        (b"PK\x03\x04 not really a zip", "upload", ["y"], "file", "not a valid NPZ file"),
    ],
)
def test_bad_uploads_raise_table_errors_with_their_place(
    raw: bytes, filename: str, target: list[str], loc: str, message: str
) -> None:
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_table(raw, filename=filename, target=target, max_rows=5)
    assert err.value.loc == loc


@pytest.mark.parametrize("cut", [3, 40])
def test_a_corrupt_stored_table_is_a_table_error(cut: int) -> None:
    raw = csv_table().to_bytes()
    with pytest.raises(TableError):
        Table.from_bytes(raw[:-cut] if cut < 10 else raw[cut:])


# --- spec data errors --------------------------------------------------------------------------------


def inline(x: Any, y: Any, **more: Any) -> dict[str, Any]:
    return {"source": "inline", "x": x, "y": y, **more}


@pytest.mark.parametrize(
    ("data", "loss", "loc", "message"),
    [
        (
            inline([[1, 2, 3, 4]] * 3 + [[1, 2, 3, 4, 5]], [1] * 4),
            "MSELoss",
            "data.x[3]",
            "row 3 has 5 values, row 0 has 4",
        ),
        (inline([[1, 2], ["a", 2]], [1, 2]), "MSELoss", "data.x[1][0]", "expected a number, got 'a'"),
        (inline([[1, 2], [None, 2]], [1, 2]), "MSELoss", "data.x[1][0]", "expected a number, got null"),
        (inline([[1, 2], [float("inf"), 2]], [1, 2]), "MSELoss", "data.x[1][0]", "not a finite number"),
        (inline([[[1, 2]], [[1, 2, 3]]], [1, 2]), "MSELoss", "data.x[1][0]", "holds 3 values, data.x[0][0] holds 2"),
        (inline([[1, 2], [3, 4]], [1, 2, 3]), "MSELoss", "data.y", "y has 3 rows, x has 2"),
        (inline([[1], [2], [3]], [0, 1, 0.5]), "CrossEntropyLoss", "data.y[2]", "integers 0..C-1 or strings, got 0.5"),
        (inline([[1], [2]], [0, "b"]), "CrossEntropyLoss", "data.y[1]", "mix numbers and strings"),
        (inline([[1], [2]], [1, "b"]), "MSELoss", "data.y[1]", "expected a number"),
        (
            {"source": "builtin", "name": "breast_cancer", "input_shape": [1, 8, 8]},
            "MSELoss",
            "data.input_shape",
            "[1, 8, 8] holds 64 values, the data has 30 features",
        ),
    ],
)
def test_bad_data_specs_raise_with_their_json_path(data: dict[str, Any], loss: str, loc: str, message: str) -> None:
    with pytest.raises(DataSpecError) as err:
        describe_data(make_spec(data, loss=loss))
    assert err.value.loc == loc
    assert message in err.value.msg


@pytest.mark.parametrize(
    ("data", "loss", "loc", "message"),
    [
        ({"features": ["species"], "target": "width"}, "MSELoss", "data.features[0]", "holds text"),
        ({"features": ["sepal", "height"]}, "CrossEntropyLoss", "data.features[1]", "no column named 'height'"),
        ({"target": "price"}, "MSELoss", "data.target", "the columns are: sepal, petal, width, species"),
        ({"target": "width"}, "MSELoss", "data.features", "holds text"),
        ({}, "MSELoss", "data.target", "holds text; MSELoss needs numbers"),
        ({"target": ["width", "petal"]}, "CrossEntropyLoss", "data.target", "one column of class labels, got 2"),
        ({"features": ["sepal", "species"]}, "CrossEntropyLoss", "data.features[1]", "also a target"),
    ],
)
def test_bad_dataset_columns_raise_with_their_json_path(
    data: dict[str, Any], loss: str, loc: str, message: str
) -> None:
    spec = make_spec({"source": "dataset", "dataset_id": "d", **data}, loss=loss)
    with pytest.raises(DataSpecError) as err:
        describe_data(spec, dataset=csv_table().description)
    assert err.value.loc == loc
    assert message in err.value.msg
    # The worker applies the same rules before it builds a tensor.
    with pytest.raises(DataSpecError):
        load_data(spec, dataset_loader=lambda _: csv_table())


def test_a_validation_split_and_a_validation_dataset_exclude_each_other() -> None:
    spec = make_spec(
        {"source": "dataset", "dataset_id": "t", "validation_dataset_id": "v"},
        loss="CrossEntropyLoss",
        validation_split=0.2,
    )
    with pytest.raises(DataSpecError) as err:
        describe_data(spec, dataset=csv_table().description)
    assert err.value.loc == "training.validation_split"


def test_classification_labels_are_counted_as_distinct_values() -> None:
    info = describe_data(make_spec(inline([[0], [1], [2], [3]], [3, 7, 7, 3.0]), loss="CrossEntropyLoss"))
    assert info.n_classes == 2 and info.target_width == 1
    loaded = load_data(make_spec(inline([[0], [1], [2], [3]], [3, 7, 7, 3]), loss="CrossEntropyLoss"))
    assert loaded.classes == ["3", "7"] and loaded.y_train.tolist() == [0, 1, 1, 0]


def test_real_valued_synthetic_targets_have_no_classes() -> None:
    spec = make_spec({"source": "synthetic", "kind": "randn"}, loss="CrossEntropyLoss")
    assert describe_data(spec).n_classes is None
    with pytest.raises(DataSpecError):
        load_data(spec)
