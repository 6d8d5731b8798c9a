"""Uploaded datasets: parsing CSV / Parquet / NPZ into typed columns, describing them, and storing them.

A ``Table`` is the one in-memory form of an uploaded dataset, for the API (which parses and describes an
upload) and for the worker (which trains on it). It is stored as a safetensors blob whose metadata holds the
``DatasetDescription``: plain arrays and JSON, never pickle.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import struct
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from service.located import LocatedError

log = logging.getLogger(__name__)

ColumnDtype = Literal["float64", "int64", "bool", "category"]
TableFormat = Literal["csv", "parquet", "npz"]

_DESCRIPTION_KEY = "trainserve.description"
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"


class TableError(LocatedError):
    """An upload that cannot become a table; ``loc`` says where ("file", "target", "file: line 7")."""


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    dtype: ColumnDtype
    n_unique: int
    mean: float | None  # None for text columns
    std: float | None  # population std (ddof=0), None for text columns
    categories: list[str] | None  # sorted distinct strings of a text column; code i -> categories[i]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "n_unique": self.n_unique,
            "mean": self.mean,
            "std": self.std,
            "categories": self.categories,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ColumnInfo:
        categories = raw.get("categories")
        return cls(
            name=str(raw["name"]),
            dtype=raw["dtype"],
            n_unique=int(raw["n_unique"]),
            mean=None if raw.get("mean") is None else float(raw["mean"]),
            std=None if raw.get("std") is None else float(raw["std"]),
            categories=None if categories is None else [str(c) for c in categories],
        )


@dataclass(frozen=True)
class DatasetDescription:
    n_rows: int
    columns: list[ColumnInfo]
    target: list[str]

    def column(self, name: str) -> ColumnInfo | None:
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, ColumnInfo]:
        # Wide tables are looked up once per feature; a dict keeps that linear.
        return {c.name: c for c in self.columns}

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_rows": self.n_rows,
            "columns": [c.to_json() for c in self.columns],
            "target": list(self.target),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DatasetDescription:
        return cls(
            n_rows=int(raw["n_rows"]),
            columns=[ColumnInfo.from_json(c) for c in raw["columns"]],
            target=[str(t) for t in raw["target"]],
        )


@dataclass
class Table:
    columns: dict[str, np.ndarray]  # 1-D, one per column, in description order
    description: DatasetDescription

    def to_bytes(self) -> bytes:
        # safetensors orders tensors its own way; the description keeps the column order.
        arrays = {name: np.ascontiguousarray(self.columns[name]) for name in self.description.column_names}
        metadata = {_DESCRIPTION_KEY: json.dumps(self.description.to_json())}
        return bytes(save_safetensors(arrays, metadata=metadata))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Table:
        try:
            description = DatasetDescription.from_json(json.loads(_safetensors_metadata(raw)[_DESCRIPTION_KEY]))
            arrays = load_safetensors(raw)
            columns = {name: arrays[name] for name in description.column_names}
        except (KeyError, ValueError, TypeError, struct.error, SafetensorError) as exc:
            raise TableError("file", f"not a stored trainserve table ({exc})") from exc
        return cls(columns=columns, description=description)


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    # The numpy API returns tensors only; the header is an 8-byte little-endian length then JSON.
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise TypeError("safetensors metadata is not an object")
    return metadata


def detect_format(raw: bytes, *, filename: str) -> TableFormat:
    """The upload's format: from the file name's suffix, else its magic bytes, else CSV."""
    lowered = filename.lower()
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith(".npz"):
        return "npz"
    if lowered.endswith((".csv", ".txt", ".tsv")):
        return "csv"
    if raw.startswith(_PARQUET_MAGIC):
        return "parquet"
    if raw.startswith(_ZIP_MAGIC):
        return "npz"
    return "csv"


def parse_table(raw: bytes, *, filename: str, target: list[str], max_rows: int) -> Table:
    """Parse an upload into typed columns and describe it; every problem raises ``TableError``."""
    if not raw:
        raise TableError("file", "the file is empty")
    fmt = detect_format(raw, filename=filename)
    if fmt == "csv":
        sep = "\t" if filename.lower().endswith(".tsv") else ","
        columns, first_line = _read_csv(raw, sep=sep, max_rows=max_rows), 2  # line 1 is the header
    elif fmt == "parquet":
        columns, first_line = _read_parquet(raw), 0
    else:
        columns, first_line = _read_npz(raw), 0
    if not columns:
        raise TableError("file", "the file has no columns")
    n_rows = len(next(iter(columns.values())))
    if n_rows == 0:
        raise TableError("file", "the file has no rows")
    if n_rows > max_rows:
        # A CSV is read only one row past the limit, so its full count is unknown.
        count = f"more than {max_rows}" if fmt == "csv" else str(n_rows)
        raise TableError("file", f"the file has {count} rows, the limit is {max_rows}")

    targets = list(dict.fromkeys(target))  # drop repeats, keep order
    if not targets:
        raise TableError("target", "name at least one target column")
    missing = [t for t in targets if t not in columns]
    if missing:
        raise TableError(
            "target", f"no column named {', '.join(map(repr, missing))}; the columns are: {', '.join(columns)}"
        )
    if len(targets) == len(columns):
        raise TableError("target", "every column is a target; at least one feature column is needed")

    typed: dict[str, np.ndarray] = {}
    infos: list[ColumnInfo] = []
    for name, values in columns.items():
        array, info = _type_column(name, values, first_line=first_line)
        typed[name] = array
        infos.append(info)
    log.info("dataset.parsed format=%s rows=%d columns=%d", fmt, n_rows, len(typed))
    return Table(columns=typed, description=DatasetDescription(n_rows=n_rows, columns=infos, target=targets))


# --- readers: each returns {column name: 1-D array}, object arrays for text --------------------------


def _read_csv(raw: bytes, *, sep: str, max_rows: int) -> dict[str, np.ndarray]:
    import pandas as pd  # imported here so that describing a spec never pays for pandas

    try:
        # One row past the limit is enough to know the limit is broken without parsing a huge file.
        frame = pd.read_csv(io.BytesIO(raw), sep=sep, nrows=max_rows + 1, skipinitialspace=True)
    except pd.errors.EmptyDataError as exc:
        raise TableError("file", "the CSV file is empty") from exc
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        loc = f"file: line {match.group(1)}" if match else "file"
        raise TableError(loc, f"not a valid CSV file: {_first_line(exc)}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise TableError("file", f"not a valid CSV file: {_first_line(exc)}") from exc
    names = [str(c) for c in frame.columns]
    # pandas renames a repeated header ("a", "a.1"); the raw header line shows the repeat.
    header = next(csv.reader([raw.split(b"\n", 1)[0].decode("utf-8", "replace")], delimiter=sep), [])
    counts = Counter(h.strip() for h in header)
    repeated = sorted(h for h, n in counts.items() if n > 1)
    if repeated:
        raise TableError("file: line 1", f"the header names {', '.join(map(repr, repeated))} more than once")
    if all(_is_number(n) for n in names):
        raise TableError("file: line 1", "the first line must name the columns (a header row); it holds only numbers")
    unnamed = [n for n in names if n.startswith("Unnamed: ")]
    if unnamed:
        raise TableError("file: line 1", f"the header row has {len(unnamed)} empty column name(s)")
    return {name: frame[col].to_numpy() for name, col in zip(names, frame.columns)}


def _read_parquet(raw: bytes) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        arrow = pq.read_table(io.BytesIO(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableError("file", f"not a valid Parquet file: {_first_line(exc)}") from exc
    out: dict[str, np.ndarray] = {}
    for name, chunked in zip(arrow.column_names, arrow.columns):
        if chunked.type.num_fields:  # struct / nested columns have no single value per cell
            raise TableError("file", f"column {name!r} has nested type {chunked.type}; only flat columns are supported")
        out[str(name)] = chunked.to_pandas().to_numpy()
    return out


def _read_npz(raw: bytes) -> dict[str, np.ndarray]:
    try:
        archive = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise TableError("file", f"not a valid NPZ file: {_first_line(exc)}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise TableError("file", "an .npy file holds one array; upload an .npz archive with one array per column")
    out: dict[str, np.ndarray] = {}
    lengths: dict[str, int] = {}
    with archive:
        for key in archive.files:
            try:
                array = archive[key]
            except ValueError as exc:  # object arrays would need pickle
                raise TableError("file", f"array {key!r} cannot be read without pickle: {_first_line(exc)}") from exc
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise TableError("file", f"array {key!r} is damaged: {_first_line(exc)}") from exc
            if array.ndim == 1:
                parts = {key: array}
            elif array.ndim == 2:
                parts = {f"{key}{i}": array[:, i] for i in range(array.shape[1])}
            else:
                raise TableError("file", f"array {key!r} has shape {list(array.shape)}; arrays must be 1-D or 2-D")
            for name, column in parts.items():
                if name in out:
                    raise TableError("file", f"two arrays give a column named {name!r}")
                out[name] = column
            lengths[key] = int(array.shape[0])
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise TableError("file", f"the arrays have different numbers of rows ({listed})")
    return out


# --- typing and describing one column ----------------------------------------------------------------


def _type_column(name: str, values: np.ndarray, *, first_line: int) -> tuple[np.ndarray, ColumnInfo]:
    kind = values.dtype.kind
    if kind in "fc" or kind == "O" or kind in "US":
        _check_missing(name, values, first_line=first_line)
    if kind == "b":
        array = values.astype(np.bool_)
        return array, _numeric_info(name, "bool", array)
    if kind in "iu":
        if kind == "u" and values.size and int(values.max()) > np.iinfo(np.int64).max:
            raise TableError("file", f"column {name!r} holds integers too large for int64")
        array = values.astype(np.int64)
        return array, _numeric_info(name, "int64", array)
    if kind == "f":
        array = values.astype(np.float64)
        bad = ~np.isfinite(array)
        if bad.any():
            raise TableError(
                _row_loc(first_line, int(np.argmax(bad))),
                f"column {name!r} has {int(bad.sum())} infinite value(s); every number must be finite",
            )
        return array, _numeric_info(name, "float64", array)
    if kind in "OUS":
        return _type_object_column(name, values, first_line=first_line)
    raise TableError("file", f"column {name!r} has unsupported type {values.dtype}")


def _type_object_column(name: str, values: np.ndarray, *, first_line: int) -> tuple[np.ndarray, ColumnInfo]:
    # Parquet nullable integers / booleans arrive as object arrays of Python numbers: keep them numeric.
    items = values.tolist()
    if items and all(isinstance(v, bool) for v in items):
        array = np.asarray(items, dtype=np.bool_)
        return array, _numeric_info(name, "bool", array)
    if items and all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        return _type_column(name, np.asarray(items, dtype=np.int64), first_line=first_line)
    if items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return _type_column(name, np.asarray(items, dtype=np.float64), first_line=first_line)
    texts = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
    categories = sorted(set(texts))
    index = {c: i for i, c in enumerate(categories)}
    codes = np.fromiter((index[t] for t in texts), dtype=np.int64, count=len(texts))
    info = ColumnInfo(name=name, dtype="category", n_unique=len(categories), mean=None, std=None, categories=categories)
    return codes, info


def _check_missing(name: str, values: np.ndarray, *, first_line: int) -> None:
    import pandas as pd

    missing = np.asarray(pd.isna(values), dtype=bool)
    if values.dtype.kind in "OUS":
        # Cells of only spaces are empty cells too.
        missing |= np.fromiter(
            (isinstance(v, str) and not v.strip() for v in values.tolist()), dtype=bool, count=values.size
        )
    if missing.any():
        first = int(np.argmax(missing))
        raise TableError(
            _row_loc(first_line, first),
            f"column {name!r} has {int(missing.sum())} missing value(s) (empty or NaN cells); "
            f"the first is {_row_words(first_line, first)}",
        )


def _numeric_info(name: str, dtype: ColumnDtype, array: np.ndarray) -> ColumnInfo:
    as_float = array.astype(np.float64)
    return ColumnInfo(
        name=name,
        dtype=dtype,
        n_unique=int(np.unique(array).size),
        mean=float(as_float.mean()),
        std=float(as_float.std()),
        categories=None,
    )


def _row_loc(first_line: int, row: int) -> str:
    return f"file: line {first_line + row}" if first_line else "file"


def _row_words(first_line: int, row: int) -> str:
    return f"on line {first_line + row}" if first_line else f"at row {row}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
