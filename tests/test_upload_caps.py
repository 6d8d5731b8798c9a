"""Uploads are held to their decoded size, not just their byte size, and odd but honest files are read right.

A tiny NPZ can declare billions of values; a CSV can use semicolons, spaces or old Mac line ends; a header can
disagree with its rows. Each is answered from headers before decoding (a 422 naming the figure), or parsed
correctly, never a 500. Parsing holds no write lock on SQLite.
"""

from __future__ import annotations

import io
import sqlite3
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sklearn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import datasets
from service.db import make_engine
from service.errors import SpecError
from service.migrate import migrate_to_head
from service.models import ApiKey
from service.settings import Settings
from service.tabular import TableError, TableLimits, parse_table
from tests.conftest import LiveServer, migrated_sessions

SKLEARN_DATA = Path(sklearn.__file__).parent / "datasets" / "data"


def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """A .npy member that declares `shape` but holds no values: what a crafted upload sends."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


LIMITS = TableLimits(max_rows=1_000_000, max_columns=1_000, max_decoded_bytes=64 * 1024 * 1024)


def _parse(raw: bytes, filename: str, target: list[str]) -> Any:
    return parse_table(raw, filename=filename, target=target, max_rows=LIMITS.max_rows, limits=LIMITS)


# --- decoded-size caps, from headers ------------------------------------------------------------------


def test_a_wide_bool_npz_is_refused_by_its_column_count_before_decoding() -> None:
    raw = _npz(x=np.zeros((2, 5_000_000), dtype=bool))
    assert len(raw) < 50_000  # tiny on the wire
    with pytest.raises(TableError, match=r"5,000,000 columns, the limit is 1,000 \(TRAINSERVE_MAX_DATASET_COLUMNS\)"):
        _parse(raw, "wide.npz", ["x0"])


def test_an_npz_declaring_ten_trillion_values_is_refused_not_a_memory_error() -> None:
    raw = _zip({"x.npy": _npy_header_only((10**13,)), "y.npy": _npy_header_only((10**13,))})
    with pytest.raises(TableError, match=r"TRAINSERVE_MAX_DATASET_DECODED_BYTES") as err:
        _parse(raw, "huge.npz", ["y"])
    assert "10,000,000,000,000 rows" in err.value.msg


def test_a_csv_over_the_column_cap_is_refused_from_its_header() -> None:
    header = ",".join(f"c{i}" for i in range(1_001))
    raw = (header + "\n" + ",".join("1" for _ in range(1_001)) + "\n").encode()
    with pytest.raises(TableError, match=r"1,001 columns, the limit is 1,000"):
        _parse(raw, "wide.csv", ["c0"])


def test_a_parquet_over_the_decoded_cap_is_refused_from_its_footer() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": np.zeros(600_000), "y": np.zeros(600_000)}), buffer)
    small = TableLimits(max_rows=1_000_000, max_columns=10, max_decoded_bytes=1_000_000)
    with pytest.raises(TableError, match=r"9,600,000 bytes \(600,000 rows x 2 columns\), the limit is 1,000,000"):
        parse_table(buffer.getvalue(), filename="big.parquet", target=["y"], max_rows=1_000_000, limits=small)


def test_an_npz_member_that_is_not_an_array_is_refused() -> None:
    good = io.BytesIO()
    np.save(good, np.arange(3.0))
    raw = _zip({"x.npy": good.getvalue(), "y.npy": good.getvalue(), "notes.txt": b"hello"})
    with pytest.raises(TableError, match=r"member 'notes.txt' is not a NumPy array"):
        _parse(raw, "mixed.npz", ["y"])


def test_an_npz_of_pickled_objects_is_refused_and_never_unpickled() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    plain = io.BytesIO()
    np.save(plain, np.arange(2.0))
    raw = _zip({"x.npy": buffer.getvalue(), "y.npy": plain.getvalue()})
    with pytest.raises(TableError, match=r"array 'x' holds Python objects"):
        _parse(raw, "objects.npz", ["y"])


# --- CSV shapes ---------------------------------------------------------------------------------------


def test_scikit_learns_wine_csv_is_refused_naming_the_line_and_both_counts() -> None:
    raw = (SKLEARN_DATA / "wine_data.csv").read_bytes()
    assert raw.startswith(b"178,13,class_0,class_1,class_2\n")
    with pytest.raises(TableError) as err:
        _parse(raw, "wine_data.csv", ["13"])
    assert err.value.loc == "file: line 2"
    assert "line 2 has 14 fields, the header (line 1) has 5" in err.value.msg


def test_a_row_with_fewer_fields_than_the_header_is_refused() -> None:
    with pytest.raises(TableError) as err:
        _parse(b"a,b,y\n1,2,3\n4,5\n", "short.csv", ["y"])
    assert (err.value.loc, "line 3 has 2 fields, the header (line 1) has 3" in err.value.msg) == ("file: line 3", True)


def test_scikit_learns_space_separated_linnerud_reads_as_three_columns() -> None:
    raw = (SKLEARN_DATA / "linnerud_exercise.csv").read_bytes()
    table = _parse(raw, "linnerud_exercise.csv", ["Jumps"])
    assert table.description.column_names == ["Chins", "Situps", "Jumps"]
    assert table.description.n_rows == 20
    assert table.description.delimiter == " "
    assert table.columns["Situps"][0] == 162


@pytest.mark.parametrize("sep", [";", "\t", ","])
def test_the_delimiter_is_detected_and_recorded(sep: str) -> None:
    raw = sep.join(["a", "b", "label"]).encode() + b"\n" + b"\n".join(
        sep.join([f"{i}.5", str(i * 2), "yes" if i % 2 else "no"]).encode() for i in range(30)) + b"\n"
    table = _parse(raw, "data.csv", ["label"])
    assert table.description.column_names == ["a", "b", "label"]
    assert table.description.delimiter == sep
    assert table.description.to_json()["delimiter"] == sep


def test_a_csv_with_carriage_return_line_ends_is_parsed() -> None:
    table = _parse(b"a,b,y\r1,2,3\r4,5,6\r", "mac.csv", ["y"])
    assert table.description.n_rows == 2
    assert table.columns["y"].tolist() == [3, 6]


# --- the upload use case on real databases -----------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(request, tmp_path_factory, "uploads")


def test_a_file_name_over_200_characters_is_a_422_not_a_database_error(sessions: sessionmaker[Session]) -> None:
    filename = "x" * 250 + ".csv"
    with sessions() as session, pytest.raises(SpecError) as err:
        datasets.upload_dataset(session, tenant="t", raw=b"a,y\n1,2\n", filename=filename, target=["y"], name=None,
                                settings=Settings())
    assert err.value.errors[0]["loc"] == "file"
    assert "254 characters, the limit is 200" in err.value.errors[0]["msg"]


def test_the_parse_holds_no_write_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite a write session begins with BEGIN IMMEDIATE; the key check already opened it. While the upload
    parses, a worker's connection must still be able to write (no wait: timeout 0)."""
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    migrate_to_head(url)
    engine = make_engine(Settings(database_url=url, home=tmp_path))
    writable_during_parse: list[bool] = []
    real_parse = datasets.parse_table

    def parse_and_probe(*args: Any, **kwargs: Any) -> Any:
        probe = sqlite3.connect(tmp_path / "lock.db", timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            writable_during_parse.append(True)
        except sqlite3.OperationalError:
            writable_during_parse.append(False)
        finally:
            probe.close()
        return real_parse(*args, **kwargs)

    monkeypatch.setattr(datasets, "parse_table", parse_and_probe)
    try:
        with sessionmaker(bind=engine, expire_on_commit=False)() as session:
            session.scalar(select(ApiKey).limit(1))  # what authenticate() does first in the request's session
            dataset = datasets.upload_dataset(session, tenant="t", raw=b"a,y\n1,2\n3,4\n", filename="d.csv",
                                              target=["y"], name=None, settings=Settings(home=tmp_path))
            session.commit()
        assert writable_during_parse == [True]
        assert dataset.n_rows == 2
    finally:
        engine.dispose()


# --- over HTTP, on both stacks ------------------------------------------------------------------------


def test_bad_uploads_answer_4xx_naming_the_figure(stack: LiveServer) -> None:
    huge = _zip({"x.npy": _npy_header_only((10**13,)), "y.npy": _npy_header_only((10**13,))})
    wide = _npz(x=np.zeros((2, 5_000_000), dtype=bool))
    wine = (SKLEARN_DATA / "wine_data.csv").read_bytes()
    cases: list[tuple[str, bytes, str, str]] = [
        ("huge.npz", huge, "file", "TRAINSERVE_MAX_DATASET_DECODED_BYTES"),
        ("wide.npz", wide, "file", "5,000,000 columns, the limit is 10,000"),
        ("x" * 230 + ".csv", b"a,y\n1,2\n", "file", "234 characters, the limit is 200"),
        ("wine_data.csv", wine, "file: line 2", "line 2 has 14 fields, the header (line 1) has 5"),
    ]
    with stack.client() as client:
        for filename, raw, loc, message in cases:
            answer = client.post("/datasets", files={"file": (filename, raw)}, data={"target": "y"})
            assert answer.status_code == 422, (filename, answer.text)
            (error,) = answer.json()["errors"]
            assert (error["loc"], message in error["msg"]) == (loc, True), (filename, error)
        mac = client.post("/datasets", files={"file": ("mac.csv", b"a,b,y\r1,2,3\r4,5,6\r")}, data={"target": "y"})
        assert mac.status_code == 201, mac.text
        assert mac.json()["n_rows"] == 2
        linnerud = client.post("/datasets", data={"target": "Jumps"}, files={
            "file": ("linnerud_exercise.csv", (SKLEARN_DATA / "linnerud_exercise.csv").read_bytes())})
        assert linnerud.status_code == 201, linnerud.text
        assert [c["name"] for c in linnerud.json()["columns"]] == ["Chins", "Situps", "Jumps"]
        assert linnerud.json()["delimiter"] == " "
        assert client.get("/healthz").status_code == 200
