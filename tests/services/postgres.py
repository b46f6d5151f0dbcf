"""PostgreSQL for tests: a private cluster in a temp folder, built with Debian's ``initdb`` and started with
``pg_ctl`` once per session on a free port, stopped and deleted at the end.

Run as root, the cluster belongs to the ``postgres`` user (PostgreSQL refuses to run as root). Password
authentication (scram) is on, so tests exercise the same URL shape as production.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.common import free_port, service_unavailable

PG_USER = "loramill"
# Distinctive, so tests can assert it never appears in a message or a log line.
PG_PASSWORD = "loramill-test-PGPW-7d41"
HINT = "install Debian's postgresql (`make services`)"


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _run(cmd: list[str], as_postgres: bool) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if as_postgres else []
    result = subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed: {result.stderr.strip()[-800:]}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://…``) of the database ``loramill`` on a running server."""
    bindir = _bindir()
    if bindir is None:
        service_unavailable("PostgreSQL", HINT)
        return
    as_postgres = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="loramill-pg-"))
    data, port = base / "data", free_port()
    started = False
    try:
        (base / "pw").write_text(PG_PASSWORD)
        if as_postgres:
            for path in (base, base / "pw"):
                shutil.chown(path, "postgres", "postgres")
        _run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(base / "pw"),
              "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"], as_postgres)
        # Durability is pointless for a throwaway cluster; turning it off makes the suite faster.
        options = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-t", "30",
              "-o", options, "start"], as_postgres)
        started = True
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user=PG_USER, password=PG_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE loramill")
        yield f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/loramill"
    except (RuntimeError, OSError, LookupError, subprocess.TimeoutExpired) as exc:
        service_unavailable("PostgreSQL", f"{exc}; {HINT}")
    finally:
        if started:
            subprocess.run((["runuser", "-u", "postgres", "--"] if as_postgres else [])
                           + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """URL of a fresh, empty database on the session server, dropped after the test."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    params = {"host": url.host, "port": url.port, "user": url.username, "password": url.password,
              "dbname": "postgres", "autocommit": True}
    with psycopg.connect(**params) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(**params) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
