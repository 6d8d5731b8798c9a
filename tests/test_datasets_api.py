"""Datasets: `GET /datasets` pages by cursor like /jobs, and reading a dataset's description leaves its stored
table in the database."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.orm import sessionmaker

from service.datasets import get_dataset_or_raise, list_datasets, load_table, upload_dataset
from service.db import make_engine
from service.migrate import migrate_to_head
from service.settings import Settings
from tests.conftest import LiveServer

CSV = b"a,b,y\n1,2,3\n4,5,6\n7,8,9\n"


def test_dataset_list_pages_by_cursor(embedded_server: LiveServer) -> None:
    with embedded_server.client() as c:
        uploaded = {c.post("/datasets", files={"file": (f"p{i}.csv", CSV)}, data={"target": "y"}).json()["id"]
                    for i in range(5)}
        seen: list[str] = []
        cursor = None
        while True:
            page = c.get("/datasets", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            assert len(page["items"]) <= 2
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) and uploaded <= set(seen)
        assert c.get("/datasets", params={"cursor": "not-a-cursor"}).json()["errors"][0]["loc"] == "cursor"


def test_reading_and_listing_a_dataset_leaves_its_blob_unloaded(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    migrate_to_head(settings.database_url)
    engine = make_engine(settings)
    make_session = sessionmaker(bind=engine, expire_on_commit=False)
    try:
        with make_session() as session:
            dataset = upload_dataset(session, tenant="t", raw=CSV, filename="d.csv", target=["y"], name=None,
                                     settings=settings)
            session.commit()
            dataset_id = dataset.id
        with make_session() as session:
            read = get_dataset_or_raise(session, tenant="t", dataset_id=dataset_id)
            assert "blob" in inspect(read).unloaded
            listed = list_datasets(session, tenant="t", limit=10)
            assert [d.id for d in listed.items] == [dataset_id]
            assert "blob" in inspect(read).unloaded
            assert load_table(session, tenant="t", dataset_id=dataset_id).description.n_rows == 3
    finally:
        engine.dispose()
