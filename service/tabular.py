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

from service.checkpoint_format import read_header
from service.located import LocatedError

log = logging.getLogger(__name__)

ColumnDtype = Literal["float64", "int64", "bool", "category"]
TableFormat = Literal["csv", "parquet", "npz"]

_DESCRIPTION_KEY = "trainserve.description"
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"
_CELL_BYTES = 8  # a stored cell: float64, int64 or a category's int64 code
# Field separators a CSV upload may use, in the order a tie is broken; the sniffer looks at this much text.
_DELIMITERS = ",\t; "
_SNIFF_CHARS = 64 * 1024


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
    delimiter: str | None = None  # the field separator a CSV upload was read with (detected); None otherwise

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
        out: dict[str, Any] = {
            "n_rows": self.n_rows,
            "columns": [c.to_json() for c in self.columns],
            "target": list(self.target),
        }
        if self.delimiter is not None:
            out["delimiter"] = self.delimiter
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DatasetDescription:
        return cls(
            n_rows=int(raw["n_rows"]),
            columns=[ColumnInfo.from_json(c) for c in raw["columns"]],
            target=[str(t) for t in raw["target"]],
            delimiter=raw.get("delimiter"),
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
    # The numpy API returns tensors only; the header is read by the one safetensors reader.
    return read_header(raw)[1]


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


@dataclass(frozen=True)
class TableLimits:
    """Caps an upload is held to, checked from its headers before its values are decoded."""

    max_rows: int
    max_columns: int = 10_000
    max_decoded_bytes: int = 512 * 1024 * 1024

    def check(self, *, n_rows: int, n_columns: int, cell_bytes: int = _CELL_BYTES) -> None:
        """Raise ``TableError`` naming the figure when n_rows x n_columns breaks a cap (rows are checked later)."""
        if n_columns > self.max_columns:
            raise TableError("file", f"the file has {n_columns:,} columns, the limit is {self.max_columns:,} "
                                     "(TRAINSERVE_MAX_DATASET_COLUMNS)")
        decoded = n_rows * n_columns * max(cell_bytes, _CELL_BYTES)
        if decoded > self.max_decoded_bytes:
            raise TableError("file", f"the file decodes to {decoded:,} bytes ({n_rows:,} rows x {n_columns:,} "
                                     f"columns), the limit is {self.max_decoded_bytes:,} "
                                     "(TRAINSERVE_MAX_DATASET_DECODED_BYTES)")


def parse_table(raw: bytes, *, filename: str, target: list[str], max_rows: int,
                limits: TableLimits | None = None) -> Table:
    """Parse an upload into typed columns and describe it; every problem raises ``TableError``."""
    limits = limits or TableLimits(max_rows=max_rows)
    if not raw:
        raise TableError("file", "the file is empty")
    fmt = detect_format(raw, filename=filename)
    delimiter: str | None = None
    if fmt == "csv":
        forced = "\t" if filename.lower().endswith(".tsv") else None
        columns, delimiter = _read_csv(raw, sep=forced, max_rows=max_rows, limits=limits)
        first_line = 2  # line 1 is the header
    elif fmt == "parquet":
        columns, first_line = _read_parquet(raw, limits=limits), 0
    else:
        columns, first_line = _read_npz(raw, limits=limits), 0
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
    description = DatasetDescription(n_rows=n_rows, columns=infos, target=targets, delimiter=delimiter)
    return Table(columns=typed, description=description)


# --- readers: each returns {column name: 1-D array}, object arrays for text --------------------------


def _read_csv(raw: bytes, *, sep: str | None, max_rows: int,
              limits: TableLimits) -> tuple[dict[str, np.ndarray], str]:
    """Columns of a CSV and the delimiter they were split on (``sep``, else detected)."""
    import pandas as pd  # imported here so that describing a spec never pays for pandas

    text = _csv_text(raw)
    sep = sep or _sniff_delimiter(text)
    header = _check_csv_shape(text, sep=sep, max_rows=max_rows, limits=limits)
    try:
        # One row past the limit is enough to know the limit is broken without parsing a huge file.
        frame = pd.read_csv(io.StringIO(text), sep=sep, nrows=max_rows + 1, skipinitialspace=True, index_col=False)
    except pd.errors.EmptyDataError as exc:
        raise TableError("file", "the CSV file is empty") from exc
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        loc = f"file: line {match.group(1)}" if match else "file"
        raise TableError(loc, f"not a valid CSV file: {_first_line(exc)}") from exc
    except ValueError as exc:
        raise TableError("file", f"not a valid CSV file: {_first_line(exc)}") from exc
    names = [str(c) for c in frame.columns]
    # pandas renames a repeated header ("a", "a.1"); the raw header line shows the repeat.
    counts = Counter(h.strip() for h in header)
    repeated = sorted(h for h, n in counts.items() if n > 1)
    if repeated:
        raise TableError("file: line 1", f"the header names {', '.join(map(repr, repeated))} more than once")
    if all(_is_number(n) for n in names):
        raise TableError("file: line 1", "the first line must name the columns (a header row); it holds only numbers")
    unnamed = [n for n in names if n.startswith("Unnamed: ")]
    if unnamed:
        raise TableError("file: line 1", f"the header row has {len(unnamed)} empty column name(s)")
    return {name: frame[col].to_numpy() for name, col in zip(names, frame.columns)}, sep


def _csv_text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TableError("file", f"not a valid CSV file: not UTF-8 text (byte {exc.start})") from exc
    # Old Mac files end lines with a lone CR, which both csv readers would take as one long line.
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _sniff_delimiter(text: str) -> str:
    """The separator of a CSV's sample: comma, tab, semicolon or space; a comma when nothing else fits."""
    sample = text[:_SNIFF_CHARS]
    if len(text) > _SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]  # whole lines only: a cut row would look ragged
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","  # one column, or nothing consistent: the sniffer cannot choose


def _check_csv_shape(text: str, *, sep: str, max_rows: int, limits: TableLimits) -> list[str]:
    """The header's names, once every row has as many fields as the header and the caps hold.

    pandas takes surplus leading fields as an index and fills missing trailing fields with NaN, so a row with
    another field count would silently lose or invent values: it is refused here, with its line number.
    """
    reader = csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True)
    try:
        header = next(reader, [])
        if not header:
            raise TableError("file", "the CSV file is empty")
        width = len(header)
        limits.check(n_rows=min(text.count("\n"), max_rows + 1), n_columns=width)
        for i, row in enumerate(reader):
            if i > max_rows:
                break
            if row and len(row) != width:
                raise TableError(
                    f"file: line {reader.line_num}",
                    f"not a valid CSV file: line {reader.line_num} has {len(row)} fields, the header (line 1) has {width} "
                    f"(fields split on {_DELIMITER_NAMES[sep]})",
                )
    except csv.Error as exc:
        raise TableError(f"file: line {reader.line_num}", f"not a valid CSV file: {_first_line(exc)}") from exc
    return header


_DELIMITER_NAMES = {",": "commas", "\t": "tabs", ";": "semicolons", " ": "spaces"}


def _read_parquet(raw: bytes, *, limits: TableLimits) -> dict[str, np.ndarray]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(raw))
        # The footer declares the shape: the caps hold before a value is decompressed.
        limits.check(n_rows=parquet.metadata.num_rows, n_columns=parquet.metadata.num_columns)
        arrow = parquet.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TableError("file", f"not a valid Parquet file: {_first_line(exc)}") from exc
    out: dict[str, np.ndarray] = {}
    for name, chunked in zip(arrow.column_names, arrow.columns):
        if chunked.type.num_fields:  # struct / nested columns have no single value per cell
            raise TableError("file", f"column {name!r} has nested type {chunked.type}; only flat columns are supported")
        out[str(name)] = chunked.to_pandas().to_numpy()
    return out


def _npz_headers(raw: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Each member's (shape, dtype) from its .npy header alone: nothing is decompressed past the header."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            key = member.filename.removesuffix(".npy")
            if not member.filename.endswith(".npy"):
                raise TableError("file", f"member {member.filename!r} is not a NumPy array (.npy); "
                                         "an .npz upload holds one array per column group")
            with archive.open(member) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise TableError("file", f"array {key!r} has .npy format version {version}; 1.0 or 2.0 are read")
            if dtype.hasobject:
                raise TableError("file", f"array {key!r} holds Python objects, which only pickle could load; "
                                         "pickled data is never loaded")
            headers[key] = (tuple(int(n) for n in shape), dtype)
    return headers


def _check_npz_caps(headers: dict[str, tuple[tuple[int, ...], np.dtype[Any]]], limits: TableLimits) -> None:
    n_columns, rows, cell_bytes = 0, 0, _CELL_BYTES
    for key, (shape, dtype) in headers.items():
        if len(shape) not in (1, 2):
            raise TableError("file", f"array {key!r} has shape {list(shape)}; arrays must be 1-D or 2-D")
        n_columns += 1 if len(shape) == 1 else shape[1]
        rows, cell_bytes = max(rows, shape[0]), max(cell_bytes, dtype.itemsize)
    limits.check(n_rows=rows, n_columns=n_columns, cell_bytes=cell_bytes)


def _read_npz(raw: bytes, *, limits: TableLimits) -> dict[str, np.ndarray]:
    try:
        headers = _npz_headers(raw)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if raw.startswith(b"\x93NUMPY"):
            raise TableError(
                "file", "an .npy file holds one array; upload an .npz archive with one array per column") from exc
        raise TableError("file", f"not a valid NPZ file: {_first_line(exc)}") from exc
    _check_npz_caps(headers, limits)
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
            else:  # the headers proved every array 1-D or 2-D
                parts = {f"{key}{i}": array[:, i] for i in range(array.shape[1])}
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
