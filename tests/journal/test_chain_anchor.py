"""The whole journal is covered: risk decisions and the id map are chained, a cut tail or a deleted
run shows against the anchor, a rewrite with our own code shows against the anchor and the key,
and journals made before all this still verify, honestly.

Every tamper case runs on SQLite and on PostgreSQL (raw SQL on a connection of its own, as
someone with write access to the database would do it)."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import sqlalchemy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from flows.cli import main
from journal.anchor import check_anchor, current_anchor, deliver, parse_anchors
from journal.chain import GENESIS, ChainEntry, content_hash, entry_hash, key_id, run_genesis, verify_all, verify_run
from journal.idmap import IdMap
from journal.risks import set_risk_status
from journal.store import Journal

PG_BASE = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
KEY = b"the auditor's chain key, 32 bytes"


@contextlib.contextmanager
def fresh_url(backend: str, tmp_path_factory):
    """A new empty journal database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('j') / 'journal.db'}"
        return
    psycopg2 = pytest.importorskip("psycopg2")
    schema = f"c2b_test_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        from journal import store

        engine = store._engines.pop(f"{PG_BASE}?options=-csearch_path%3D{schema}", None)
        if engine is not None:
            engine.dispose()
        conn.cursor().execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def sql(url: str, statement: str, **params) -> None:
    """Tamper as a person with database access would: plain SQL, no journal code."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def fill(journal: Journal, name: str = "acme") -> str:
    """One run with steps, a gate, risk decisions and a CRM id map (put in batches, then repointed)."""
    run, _ = journal.open_run(name=name, portal="https://acme.example.invalid", mode="rehearsal", timezone="UTC",
                              config_snapshot={}, new=True)
    journal.add_event(run.id, "start", "rehearsal started")
    ex = journal.start_step(run.id, step_id="1.1", phase=1, seq=1, title="step 1.1", owner="contractor",
                            urgency="medium", action="manual", planned_duration_s=60, planned_start=None)
    journal.finish_step(ex, outcome="done", actor="Alex")
    set_risk_status(journal, run.id, "R3", "accepted", decided_by="Dana", note="accepted at gate 1")
    set_risk_status(journal, run.id, "R1", "mitigation-planned", decided_by="Dana", note="mirror first")
    idmap = IdMap(journal, f"m-{run.id}", run_id=run.id)
    idmap.put("lead", [(str(i), str(500 + i)) for i in range(1, 6)])
    idmap.put("deal", [(str(i), str(900 + i)) for i in range(1, 4)])
    idmap.repoint("lead", [("2", "777")])
    journal.record_signoff(run.id, phase=1, signer="Dana", role="CEO", decision="approve", comment="ok")
    journal.add_event(run.id, "note", "after the gate")
    return run.id


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path_factory):
    with fresh_url(request.param, tmp_path_factory) as u:
        yield u


def test_every_decision_and_mapping_is_chained(url):
    journal = Journal(url)
    run_id = fill(journal)
    result = verify_run(journal, run_id)
    assert result.proven, result.summary()
    with journal.session() as s:
        tables = {t for (t,) in s.execute(sqlalchemy.select(ChainEntry.table_name).where(ChainEntry.run_id == run_id))}
    assert {"c2b_risk_status", "c2b_crm_id_map", "c2b_signoffs"} <= tables
    sql(url, "UPDATE c2b_risk_status SET decided_by = 'Mallory' WHERE risk_id = 'R3'")
    first = verify_run(journal, run_id).first_broken
    assert first.kind == "edited" and "risk decision" in first.message and "R3" in first.message


def test_a_cut_tail_is_caught_by_the_anchor_not_missed(url):
    """The issue's case: the last sign-off and the events after it deleted with their chain links."""
    journal = Journal(url)
    run_id = fill(journal)
    anchor = current_anchor(journal, reason="gate 1")
    with journal.session() as s:
        (signoff_seq,) = s.execute(sqlalchemy.select(ChainEntry.seq).where(
            ChainEntry.run_id == run_id, ChainEntry.table_name == "c2b_signoffs")).one()
        entries = verify_run(journal, run_id).entries
    sql(url, "DELETE FROM c2b_signoffs WHERE run_id = :r", r=run_id)
    sql(url, "DELETE FROM c2b_events WHERE run_id = :r AND kind = 'note'", r=run_id)
    sql(url, "DELETE FROM c2b_chain WHERE run_id = :r AND seq >= :s", r=run_id, s=signoff_seq)
    assert verify_run(journal, run_id).ok  # nothing inside the journal shows it …
    check = check_anchor(journal, anchor)  # … the anchor kept elsewhere does
    assert not check.ok
    assert any(f"tail cut — {signoff_seq - 1} entries now, {entries} at the anchor" in d for d in check.differences)
    # the short form a customer notice carries catches it too
    assert not check_anchor(journal, parse_anchors(f"keep this: {anchor.short}")[0]).ok


def _delete_run(url: str, run_id: str) -> None:
    for table in ("c2b_crm_id_map", "c2b_risk_status", "c2b_signoffs", "c2b_events", "c2b_step_executions",
                  "c2b_chain"):
        sql(url, f"DELETE FROM {table} WHERE run_id = :r", r=run_id)
    sql(url, "DELETE FROM c2b_runs WHERE id = :r", r=run_id)


def test_a_deleted_run_is_caught(url):
    journal = Journal(url)
    first, middle, last = fill(journal, "a"), fill(journal, "b"), fill(journal, "c")
    anchor = current_anchor(journal, reason="end")
    _delete_run(url, middle)
    results = {r.run_id: r for r in verify_all(journal)}
    assert set(results) == {first, last}
    problem = results[last].first_broken  # the next run points at a run that is gone
    assert problem.kind == "run-missing" and "a whole run was deleted" in problem.message
    assert any(f"run {middle} is missing" in d for d in check_anchor(journal, anchor).differences)
    _delete_run(url, last)  # the last run leaves no trace inside: only the anchor shows it
    assert all(r.ok for r in verify_all(journal))
    differences = check_anchor(journal, anchor).differences
    assert any(f"run {last} is missing" in d for d in differences) and any("1 runs now, 3" in d for d in differences)


def test_a_journal_that_only_grew_still_matches_its_anchors(url):
    journal = Journal(url)
    run_id = fill(journal)
    at_gate = current_anchor(journal, reason="gate 1")
    journal.add_event(run_id, "note", "later")
    second = fill(journal, "second")
    journal.finish_run(second, "completed")
    assert check_anchor(journal, at_gate).ok
    assert check_anchor(journal, parse_anchors(at_gate.short)[0]).ok
    assert parse_anchors(at_gate.to_json())[0].chains == at_gate.chains


def _rewrite_with_our_code(url: str, run_id: str, *, alg: str | None, key: bytes | None = None) -> None:
    """What someone with our code and write access does: change a row, recompute the run's whole chain."""
    sql(url, "UPDATE c2b_risk_status SET decided_by = 'Mallory' WHERE risk_id = 'R3'")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            tables = {t.name: t for t in ChainEntry.metadata.sorted_tables}
            links = list(conn.execute(sqlalchemy.select(ChainEntry.__table__).where(ChainEntry.run_id == run_id)
                                      .order_by(ChainEntry.seq)).mappings())
            prev = links[0]["prev_hash"]
            for link in links:
                table = tables[link["table_name"]]
                (pk,) = json.loads(link["row_id"])
                pk_column = next(iter(table.primary_key.columns))
                row = conn.execute(sqlalchemy.select(table).where(pk_column == pk)).mappings().first()
                chash = content_hash(dict(row)) if row is not None and link["op"] not in ("delete", "moved") \
                    else link["content_hash"]
                ehash = entry_hash(prev, run_id, link["seq"], link["table_name"], link["row_id"], link["op"], chash,
                                   link["at"], alg, key)
                conn.execute(sqlalchemy.update(ChainEntry.__table__).where(ChainEntry.id == link["id"]).values(
                    content_hash=chash, prev_hash=prev, entry_hash=ehash, alg=alg))
                prev = ehash
    finally:
        engine.dispose()


def test_a_rewrite_with_our_code_is_caught_by_the_anchor(url):
    journal = Journal(url)
    run_id = fill(journal)
    anchor = current_anchor(journal)
    _rewrite_with_our_code(url, run_id, alg="sha256")
    assert verify_run(journal, run_id).proven  # the unkeyed chain alone cannot tell (README says so)
    differences = check_anchor(journal, anchor).differences
    assert differences and "head differs" in differences[0]


def test_a_rewrite_needs_the_key(url):
    journal = Journal(url, chain_key=KEY)
    run_id = fill(journal)
    assert verify_run(journal, run_id).status == "intact" and verify_run(journal, run_id).mode == "keyed"
    # without the key, nothing wrong is found, but nothing is claimed either
    unkeyed_view = verify_run(journal, run_id, key=None)
    assert unkeyed_view.ok
    _rewrite_with_our_code(url, run_id, alg="sha256")  # the attacker has our code, not the key
    downgraded = verify_run(journal, run_id, key=KEY)
    assert downgraded.status == "not keyed" and not downgraded.proven
    _rewrite_with_our_code(url, run_id, alg=f"hmac-sha256:{key_id(KEY)}", key=b"a guessed key")
    forged = verify_run(journal, run_id, key=KEY)
    assert forged.status == "tampered" and "without the key" in forged.first_broken.message


def test_keyed_chain_without_the_key_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    run_id = fill(Journal(url, chain_key=KEY))
    # another process, no key registered for this URL: what an auditor without the key runs
    fresh = Journal(url, engine=sqlalchemy.create_engine(url))
    result = verify_run(fresh, run_id)
    assert result.ok and result.status == "keys not checked" and "cannot be checked" in result.summary()
    assert verify_run(fresh, run_id, key=b"another key").status == "keys not checked"


# -- which entry is tampered with: chosen by hypothesis, on both backends ---------------------------

TAMPERS = ["edit", "delete", "delete-with-links", "insert", "swap-rows", "swap-links"]


def _tamper(url: str, run_id: str, table: str, op: str, pick: int) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = [i for (i,) in conn.execute(text(f"SELECT id FROM {table} WHERE run_id = :r ORDER BY id"),
                                              {"r": run_id})]
    finally:
        engine.dispose()
    row, other = ids[pick % len(ids)], ids[(pick + 1) % len(ids)]
    column = "decided_by" if table == "c2b_risk_status" else "box_id"
    if op == "edit":
        sql(url, f"UPDATE {table} SET {column} = 'X' WHERE id = :i", i=row)
    elif op == "delete":
        sql(url, f"DELETE FROM {table} WHERE id = :i", i=row)
    elif op == "delete-with-links":
        sql(url, f"DELETE FROM {table} WHERE id = :i", i=row)
        sql(url, "DELETE FROM c2b_chain WHERE table_name = :t AND row_id = :rid", t=table, rid=json.dumps([row]))
    elif op == "insert":
        if table == "c2b_risk_status":
            sql(url, "INSERT INTO c2b_risk_status (run_id, risk_id, status, decided_by, at) "
                     "SELECT run_id, 'R9', 'accepted', 'Mallory', at FROM c2b_risk_status WHERE id = :i", i=row)
        else:
            sql(url, "INSERT INTO c2b_crm_id_map (migration, run_id, entity, cloud_id, box_id, created_at) "
                     "SELECT migration, run_id, entity, '99999', box_id, created_at FROM c2b_crm_id_map WHERE id = :i",
                i=row)
    elif op == "swap-rows":  # reorder: two entries trade places (their contents)
        sql(url, f"UPDATE {table} SET {column} = CASE WHEN id = :a THEN (SELECT {column} FROM {table} WHERE id = :b) "
                 f"ELSE (SELECT {column} FROM {table} WHERE id = :a) END WHERE id IN (:a, :b)", a=row, b=other)
        if row == other or _same(url, table, column, row, other):
            sql(url, f"UPDATE {table} SET {column} = 'Y' WHERE id = :i", i=row)  # equal contents: an edit then
    elif op == "swap-links":  # reorder: two chain entries trade places
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                seqs = [q for (q,) in conn.execute(text("SELECT seq FROM c2b_chain WHERE run_id = :r AND "
                                                        "table_name = :t ORDER BY seq"), {"r": run_id, "t": table})]
        finally:
            engine.dispose()
        a = seqs[pick % len(seqs)]
        sql(url, "UPDATE c2b_chain SET seq = CASE WHEN seq = :a THEN :b ELSE :a END WHERE run_id = :r AND "
                 "seq IN (:a, :b)", a=a, b=a + 1, r=run_id)


def _same(url, table, column, a, b) -> bool:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            values = {v for (v,) in conn.execute(text(f"SELECT {column} FROM {table} WHERE id IN (:a, :b)"),
                                                 {"a": a, "b": b})}
    finally:
        engine.dispose()
    return len(values) == 1


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(["c2b_risk_status", "c2b_crm_id_map"]), op=st.sampled_from(TAMPERS),
       pick=st.integers(min_value=0, max_value=50))
def test_any_tamper_of_risks_or_the_id_map_is_caught(backend, tmp_path_factory, table, op, pick):
    with fresh_url(backend, tmp_path_factory) as url:
        journal = Journal(url)
        run_id = fill(journal)
        anchor = current_anchor(journal)
        _tamper(url, run_id, table, op, pick)
        result = verify_run(journal, run_id)
        assert not result.ok, (op, table, pick)  # the chain itself sees it: none of these is at the tail
        assert any(p.table == table or p.kind == "link-broken" for p in result.problems)
        if op == "delete-with-links":  # fewer entries than anchored: the anchor sees it as well
            assert not check_anchor(journal, anchor).ok


# -- journals made before this change --------------------------------------------------------------

def _downgrade_to_format_1(url: str) -> None:
    """Make the journal look as cloud2box wrote it before: links without ``alg`` in the old hash, no
    links for risk decisions or the id map, runs starting from GENESIS, no ``alg`` column."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM c2b_chain WHERE table_name IN ('c2b_risk_status', 'c2b_crm_id_map')"))
            links = list(conn.execute(text("SELECT * FROM c2b_chain ORDER BY run_id, seq")).mappings())
            runs: dict[str, tuple[int, str]] = {}
            for link in links:
                seq, prev = runs.get(link["run_id"], (0, GENESIS))
                seq += 1
                at = link["at"]
                if isinstance(at, str):
                    import datetime as dt

                    at = dt.datetime.fromisoformat(at)
                ehash = entry_hash(prev, link["run_id"], seq, link["table_name"], link["row_id"], link["op"],
                                   link["content_hash"], at)
                conn.execute(text("UPDATE c2b_chain SET seq = :s, prev_hash = :p, entry_hash = :e WHERE id = :i"),
                             {"s": seq, "p": prev, "e": ehash, "i": link["id"]})
                runs[link["run_id"]] = (seq, ehash)
            conn.execute(text("DROP INDEX IF EXISTS ix_c2b_chain_run_seq"))
            conn.execute(text("ALTER TABLE c2b_chain DROP COLUMN alg"))
    finally:
        engine.dispose()
    from journal import chain, store

    old = store._engines.pop(url, None)  # a new process: the schema is looked at again
    if old is not None:
        chain._UPGRADED.discard(old)
        old.dispose()


def test_an_old_journal_opens_and_says_what_is_not_covered(url):
    run_id = fill(Journal(url))
    _downgrade_to_format_1(url)
    journal = Journal(url)  # opens: the chain table gains its new column
    result = verify_run(journal, run_id)
    assert result.ok and result.status == "partially chained" and not result.proven
    assert {p.table for p in result.uncovered} == {"c2b_risk_status", "c2b_crm_id_map"}
    assert "PARTIALLY CHAINED" in result.summary() and "intact" not in result.summary()
    # the old run goes on under the new format: new entries are chained, old ones still reported
    set_risk_status(journal, run_id, "R5", "accepted", decided_by="Dana")
    journal.add_event(run_id, "note", "resumed after the upgrade")
    resumed = verify_run(journal, run_id)
    assert resumed.ok and len(resumed.uncovered) == len(result.uncovered)
    sql(url, "UPDATE c2b_signoffs SET signer = 'Mallory'")  # what format 1 chained is still checked
    assert verify_run(journal, run_id).status == "tampered"


def test_a_journal_without_any_chain_is_unchained(url):
    run_id = fill(Journal(url))
    sql(url, "DELETE FROM c2b_chain")
    result = verify_run(Journal(url), run_id)
    assert result.status == "unchained" and not result.proven and "NOT CHAINED" in result.summary()


# -- the CLI and the anchor's targets -----------------------------------------------------------------

def test_cli_verify_against_the_anchor_file(url, tmp_path, capsys):
    journal = Journal(url)
    run_id = fill(journal)
    anchor_file = tmp_path / "auditor" / "anchors.jsonl"
    anchor_file.parent.mkdir()
    deliver(current_anchor(journal, reason="gate 1"), str(anchor_file), timeout_s=5)
    journal.add_event(run_id, "note", "after the anchor")
    deliver(current_anchor(journal, reason="end"), str(anchor_file), timeout_s=5)
    assert main(["journal", "verify", "--journal-url", url, "--anchor", str(anchor_file)]) == 0
    out = capsys.readouterr().out
    assert out.count("MATCHES") == 2 and "journal intact (unkeyed)" in out
    sql(url, "DELETE FROM c2b_events WHERE run_id = :r AND message = 'after the anchor'", r=run_id)
    sql(url, "DELETE FROM c2b_chain WHERE run_id = :r AND seq = (SELECT MAX(seq) FROM c2b_chain WHERE run_id = :r)",
        r=run_id)
    assert main(["journal", "verify", "--journal-url", url, "--anchor", str(anchor_file)]) == 1
    out = capsys.readouterr().out
    assert "tail cut" in out and "DIFFERS" in out and out.count("MATCHES") == 1
    # without an anchor the command says what it cannot see
    assert main(["journal", "verify", "--journal-url", url]) == 0
    assert "no --anchor given" in capsys.readouterr().out


def test_cli_exit_codes_for_what_cannot_be_proven(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    fill(Journal(url))
    sql(url, "DELETE FROM c2b_chain")
    assert main(["journal", "verify", "--journal-url", url]) == 3
    assert "NOT CHAINED" in capsys.readouterr().out
    assert main(["journal", "verify", "--journal-url", url, "--anchor", "no anchor in here"]) == 2


def test_the_anchor_is_posted_to_a_loopback_url_within_the_timeout():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from journal.anchor import Anchor, fold

        anchor = Anchor(runs=1, head=fold([("r1", 3, "ab" * 32)]), chains=[("r1", 3, "ab" * 32)], reason="gate 1")
        deliver(anchor, f"http://127.0.0.1:{server.server_port}/anchors?token=x", timeout_s=5)
        assert received and received[0]["head"] == anchor.head and received[0]["reason"] == "gate 1"
    finally:
        server.shutdown()


def test_an_anchor_target_that_does_not_answer_times_out():
    import socket
    import time

    import requests

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        from journal.anchor import Anchor

        start = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            deliver(Anchor(runs=0, head="0" * 64, chains=[]), f"http://127.0.0.1:{silent.getsockname()[1]}/",
                    timeout_s=0.5)
        assert time.monotonic() - start < 5
    finally:
        silent.close()


def test_run_genesis_names_the_run_before():
    assert run_genesis(None) == run_genesis("") != run_genesis("abc") != GENESIS


def test_summary_notice_carries_the_anchor(tmp_path):
    from journal.configuration import NoticesSection
    from journal.notices import Notifier

    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run_id = fill(journal)
    anchor = current_anchor(journal)
    for language in ("en", "de", "ru"):
        notifier = Notifier(journal, run_id, NoticesSection(language=language, dry_run=True), [],
                            out_dir=tmp_path / "notices")
        notice = notifier.render("summary", window_start=None, window_end=None, anchor=anchor.short)
        assert anchor.short in notice.body
        assert parse_anchors(notice.body)[0].head == anchor.head


def test_chain_key_secret_must_name_a_secret_and_is_never_echoed(tmp_path, monkeypatch):
    from connectors.errors import ConfigError
    from flows.config import config_from_dict, journal_chain_key

    base = {"migration": {"name": "acme", "portal": "https://acme.example.invalid"},
            "post_restore": {}}
    pasted = "s3cr3t-key-pasted-by-mistake"
    config = config_from_dict({**base, "journal": {"chain_key_secret": pasted}})
    with pytest.raises(ConfigError) as err:
        journal_chain_key(config)
    assert pasted not in str(err.value) and "chain_key_secret" in str(err.value)
    config = config_from_dict({**base, "journal": {"chain_key_secret": "journal_key"},
                               "secrets": {"journal_key": {"env": "C2B_TEST_JOURNAL_KEY"}}})
    monkeypatch.setenv("C2B_TEST_JOURNAL_KEY", "k" * 32)
    assert journal_chain_key(config) == b"k" * 32


def test_an_id_map_row_repointed_by_a_later_run_moves_between_chains(url):
    """The map outlives runs: the cutover repoints what the rehearsal mapped; both chains stay intact."""
    journal = Journal(url)
    rehearsal = fill(journal, "acme")
    cutover, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="cutover",
                                  timezone="UTC", config_snapshot={})
    IdMap(journal, f"m-{rehearsal}", run_id=cutover.id).repoint("lead", [("3", "4242")])
    results = {r.run_id: r for r in verify_all(journal)}
    assert results[rehearsal].proven and results[cutover.id].proven, [r.summary() for r in results.values()]
    with journal.session() as s:
        ops = [op for (op,) in s.execute(sqlalchemy.select(ChainEntry.op).where(
            ChainEntry.run_id == rehearsal, ChainEntry.table_name == "c2b_crm_id_map").order_by(ChainEntry.seq))]
    assert ops[-1] == "moved"
    sql(url, "UPDATE c2b_crm_id_map SET run_id = :r WHERE box_id = '4242'", r=rehearsal)  # moved back by hand
    assert not verify_run(journal, rehearsal).ok and not verify_run(journal, cutover.id).ok
