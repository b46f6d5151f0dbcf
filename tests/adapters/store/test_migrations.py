"""The packaged Alembic migrations create exactly the models' schema, idempotently and concurrently."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from loramill.adapters.store import JobStore, upgrade
from loramill.adapters.store.migrate import HEAD, MIGRATIONS, alembic_config
from loramill.adapters.store.models import Base
from tests.adapters.store.helpers import create_database


def _schema_diff(store: JobStore) -> list[object]:
    with store.db.engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata))


def _revision(store: JobStore) -> str | None:
    with store.db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_sqlite_matches_models(tmp_path: Path) -> None:
    store = JobStore(f"sqlite:///{tmp_path / 'a.db'}")

    assert _schema_diff(store) == [] and _revision(store) == HEAD


def test_upgrade_postgresql_matches_models(postgres_url: str) -> None:
    store = JobStore(create_database(postgres_url, "loramill_migration_tests"))

    assert _schema_diff(store) == [] and _revision(store) == HEAD
    store.close()


def test_upgrade_twice_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    JobStore(url).create_job("t", "u", "train", {"x": 1})

    upgrade(url)

    assert JobStore(url).get_job("t") is not None


def test_upgrade_from_two_processes_at_once(tmp_path: Path) -> None:
    url, errors = f"sqlite:///{tmp_path / 'race.db'}", []

    def start() -> None:
        try:
            upgrade(url)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and _schema_diff(JobStore(url, migrate=False)) == []


def test_default_sqlite_database_lives_in_loramill_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("LORAMILL_DATABASE_URL", raising=False)
    monkeypatch.setenv("LORAMILL_HOME", str(tmp_path / "home"))

    store = JobStore()

    assert (tmp_path / "home" / "loramill.db").is_file() and store.dialect == "sqlite"


def test_migrations_ship_without_alembic_ini() -> None:
    assert (MIGRATIONS / "env.py").is_file() and list((MIGRATIONS / "versions").glob("0001_*.py"))
    assert not (MIGRATIONS / "alembic.ini").exists()


def test_head_constant_names_the_newest_migration() -> None:
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_open_store_at_head_without_running_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    JobStore(url).create_job("t", "u", "train", {"x": 1})
    # A fresh interpreter, since this one has imported Alembic already.
    code = ("import sys; from loramill.adapters.store import JobStore; store = JobStore(sys.argv[1]); "
            "print(store.get_job('t') is not None, 'alembic' in sys.modules)")

    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120, check=True)

    assert done.stdout.split() == ["True", "False"]
