"""``loramill keys``: a key is printed once, works against the store, and can be revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from loramill.adapters.store import JobStore
from loramill.cli import main


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    monkeypatch.setenv("LORAMILL_DATABASE_URL", url)
    return url


def test_create_key_prints_working_key_once(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--user", "erin", "--admin"]) == 0
    key = capsys.readouterr().out.strip()

    store = JobStore(database)
    user = store.verify_api_key(key)
    assert user is not None and user.id == "erin" and user.is_admin
    assert all(key not in str(record) for record in store.list_api_keys("erin"))
    store.close()


def test_revoke_key_makes_it_useless(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    main(["keys", "create", "--user", "frank"])
    key = capsys.readouterr().out.strip()
    main(["keys", "list", "--user", "frank"])
    key_id = capsys.readouterr().out.split()[0]

    assert main(["keys", "revoke", key_id]) == 0
    store = JobStore(database)
    assert store.verify_api_key(key) is None
    store.close()


def test_create_admin_key_for_existing_plain_user_is_refused(database: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    main(["keys", "create", "--user", "gina"])
    capsys.readouterr()

    assert main(["keys", "create", "--user", "gina", "--admin"]) == 1
    assert "not an admin" in capsys.readouterr().err


def test_create_key_with_unsafe_user_id_names_the_rule(database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--user", "../etc"]) == 1
    assert "--user" in capsys.readouterr().err
