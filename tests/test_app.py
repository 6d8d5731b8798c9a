"""create_app(settings) is the only builder of the API, and it honours the settings it is given."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service import db
from service.app import create_app
from service.auth import create_api_key
from service.migrate import migrate_to_head
from service.settings import Settings


@pytest.fixture
def fresh_db() -> Iterator[None]:
    db.reset()
    yield
    db.reset()


def test_the_app_uses_the_database_its_settings_name(tmp_path: Path, fresh_db: None) -> None:
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'given.db'}")
    migrate_to_head(settings.database_url)
    with TestClient(create_app(settings)) as client:
        with db.session_scope() as session:  # the key exists only in the database the settings name
            key = create_api_key(session, tenant="given")
        response = client.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        assert response.json()["items"] == []
    assert db.get_engine().url.database == str(tmp_path / "given.db")
