"""Fixtures shared by the connectors' tests: a fresh database on the machine's MariaDB."""

from __future__ import annotations

import uuid

import pytest

MARIADB = dict(host="127.0.0.1", port=3306, user="root", password="")


def mariadb_connect(database: str | None = None):
    pymysql = pytest.importorskip("pymysql")
    try:
        return pymysql.connect(**MARIADB, database=database, connect_timeout=5, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB on 127.0.0.1:3306: {exc}")


@pytest.fixture
def db_name():
    """A database name c2b_test_<random>; dropped afterwards (the restore creates it)."""
    name = f"c2b_test_{uuid.uuid4().hex[:10]}"
    conn = mariadb_connect()
    try:
        yield name
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()
