"""Shared fixtures for all test packages."""

from __future__ import annotations

import subprocess
import uuid

import pytest

PG_BASE = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session", autouse=True)
def _sandbox_answers_without_nagle():
    """The sandbox portal's and website's HTTP handlers (http.server) send an answer's headers and
    its body in two writes; with Nagle's algorithm on, the body waits for the client's delayed ACK:
    ~40 ms added to every REST call on loopback (measured: 45 ms a call, 1.7 ms without). That wait
    is an artefact of http.server, not a cost the sandbox models, and no test means it; the
    simulated costs (PortalLimits: rate, burst, per-call costs, write latency) stay what each test
    sets. Tests with the sandbox in a subprocess (the demo) keep the wait."""
    from sandbox import website
    from sandbox.portal import server

    handlers = (server._Handler, website._Handler)
    before = [h.disable_nagle_algorithm for h in handlers]
    for h in handlers:
        h.disable_nagle_algorithm = True  # socketserver.StreamRequestHandler sets TCP_NODELAY in setup()
    yield
    for h, value in zip(handlers, before):
        h.disable_nagle_algorithm = value


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
