"""Shared fixtures for all test packages."""

from __future__ import annotations

import subprocess
import uuid

import pytest

PG_BASE = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_url():
    """A PostgreSQL URL whose tables live in a fresh schema, dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    schema = f"c2b_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH sshd on a loopback port (see tests/connectors/ssh/sshd.py); skips when
    OpenSSH cannot run here."""
    from tests.connectors.ssh.sshd import start_sshd

    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"no sshd: {exc}")
    try:
        yield server
    finally:
        server.stop()
