"""Delta export, idempotent import and reconciliation against a sandbox cloud/box pair."""

import csv
import datetime as dt
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from connectors.bitrix24.delta import export_delta, write_csvs
from connectors.outputs import neutralise_cell as safe_cell
from connectors.bitrix24.importer import import_delta, map_users
from connectors.bitrix24.reconcile import reconcile
from connectors.secrets import RedactingFilter

from .crm_helpers import clients, expected_delta, idmap, make_pair, migrated

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def pair():
    p = make_pair()
    yield p
    p.close()


def _run(pair, tmp_path, **kw):
    cloud, box = clients(pair)
    delta = export_delta(cloud, box, pair.cutoff)
    m = idmap(tmp_path)
    users = map_users(cloud, box)
    report = import_delta(box, delta, m, user_map=users, fallback_user_id=1, **kw)
    return delta, m, users, report, box


def assert_box_holds_exactly_the_delta(pair, m):
    """The box's full content: backup records + one twin per post-cutoff record, nothing else."""
    want = expected_delta(pair)
    for entity, ids in want.items():
        twins = migrated(pair, entity)
        origins = Counter(str(r["ORIGIN_ID"]) for r in twins)
        assert set(origins) == ids, entity  # zero missing, nothing extra
        assert max(origins.values()) == 1, f"{entity}: duplicates {[k for k, v in origins.items() if v > 1]}"
        backup = set(pair.dataset.backup[entity])
        created = {i for i in ids if int(i) not in backup}
        # every other box record is a backup record (no stray creations)
        assert pair.box.store.count(entity) == len(backup) + len(created)
        assert m.get(entity) == {str(r["ORIGIN_ID"]): str(r["ID"]) for r in twins}


def test_delta_is_exactly_created_or_modified_after_cutoff(pair, tmp_path):
    cloud, box = clients(pair)
    delta = export_delta(cloud, box, pair.cutoff)
    want = expected_delta(pair)
    for entity, d in delta.entities.items():
        assert set(d.rows) == want[entity], entity
        for rid, kind in d.kind.items():
            assert kind == ("modified" if int(rid) in pair.dataset.backup[entity] else "created")
    victim = next(c for c in pair.dataset.changes if c.kind == "delete")
    assert delta.entities[victim.entity].deleted_in_cloud == [str(victim.record_id)]
    # the same cutoff written in another time zone selects the same set
    other = export_delta(cloud, box, pair.cutoff.astimezone(dt.timezone(dt.timedelta(hours=-5))),
                         detect_deleted=False)
    assert {e: set(d.rows) for e, d in other.entities.items()} == want


def test_csvs_cannot_inject_formulas_and_hold_no_secret(pair, tmp_path):
    cloud, box = clients(pair)
    delta = export_delta(cloud, box, pair.cutoff)
    # a post-cutoff lead whose title is a formula
    rid = next(iter(i for i, k in delta.entities["lead"].kind.items() if k == "created"))
    delta.entities["lead"].rows[rid]["TITLE"] = '=HYPERLINK("http://evil","x")'
    delta.entities["lead"].rows[rid]["COMMENTS"] = f"see {pair.cloud_webhook}crm.lead.get"
    files = write_csvs(delta, tmp_path / "csv")
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    assert pair.cloud_code not in text and pair.box_code not in text
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            for row in csv.reader(fh):
                for cell in row:
                    assert not cell.startswith(("=", "+", "-", "@")), (f.name, cell)
    assert safe_cell("=1+1") == "'=1+1" and safe_cell("+7 495") == "'+7 495" and safe_cell("ok") == "ok"


def test_import_remaps_relations_and_reconciles(pair, tmp_path, caplog):
    # urllib3 logs request paths (with the code) at DEBUG: the product's log filter must mask it
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.DEBUG):
        delta, m, users, report, box = _run(pair, tmp_path)
    assert not report.failures and report.method == "batchImport"
    assert_box_holds_exactly_the_delta(pair, m)
    maps = {e: m.get(e) for e in ("company", "contact", "lead", "deal")}
    checked = 0
    for change in pair.dataset.changes:
        if change.kind != "add":
            continue
        cloud_rec = pair.cloud.store.get(change.entity, change.record_id)
        box_rec = pair.box.store.get(change.entity, int(maps[change.entity][str(change.record_id)]))
        for field, target in (("COMPANY_ID", "company"), ("CONTACT_ID", "contact"), ("LEAD_ID", "lead")):
            cv = cloud_rec.get(field)
            if cv is None:
                continue
            expected = maps[target].get(str(cv), str(cv))  # backup records keep their IDs
            assert str(box_rec.get(field)) == expected, (change.entity, change.record_id, field)
            checked += 1
        if change.entity != "deal":
            assert sorted(v["VALUE"] for v in box_rec.get("PHONE", [])) == \
                sorted(v["VALUE"] for v in cloud_rec.get("PHONE", []))
        assert box_rec["DATE_CREATE"] == cloud_rec["DATE_CREATE"]  # batchImport keeps creation times
    assert checked > 20
    # post-cutoff records point at post-cutoff records whose box IDs differ from the cloud's
    assert any(maps["company"][c] != c for c in maps["company"])
    # a user hired after the backup is not in the box: fallback, listed
    new_user = pair.dataset.new_users[0]["ID"]
    assert new_user in report.fallback_users
    rec = reconcile(box, delta, m, user_map=users, fallback_user_id=1)
    assert rec.ok and rec.mismatches == 0
    assert all(r.matched == r.cloud_delta == r.box_migrated for r in rec.entities.values())
    assert pair.cloud_code not in caplog.text and pair.box_code not in caplog.text


def test_rerun_writes_nothing_and_applies_new_cloud_changes(pair, tmp_path):
    delta, m, users, report, box = _run(pair, tmp_path)
    cloud, box = clients(pair)
    # the cloud changes an already moved record, and a straggler adds one
    moved = next(c for c in pair.dataset.changes if c.kind == "add" and c.entity == "lead")
    pair.cloud.store.update("lead", moved.record_id, {"STATUS_ID": "JUNK", "PHONE": [{"VALUE": "+1 555", "VALUE_TYPE": "WORK"}]})
    new_id = pair.cloud.store.add("lead", {"TITLE": "straggler", "ASSIGNED_BY_ID": "2"})
    delta2 = export_delta(cloud, box, pair.cutoff)
    report2 = import_delta(box, delta2, m, user_map=users)
    assert report2.entities["lead"].created == 1 and report2.entities["lead"].updated == 1
    assert sum(r.created + r.updated for e, r in report2.entities.items() if e != "lead") == 0
    box_rec = pair.box.store.get("lead", int(m.get("lead")[str(moved.record_id)]))
    assert box_rec["STATUS_ID"] == "JUNK"
    cloud_phones = sorted(v["VALUE"] for v in pair.cloud.store.get("lead", moved.record_id)["PHONE"])
    assert "+1 555" in cloud_phones
    assert sorted(v["VALUE"] for v in box_rec["PHONE"]) == cloud_phones  # replaced, not appended twice
    assert str(new_id) in m.get("lead")
    assert reconcile(box, delta2, m, user_map=users).ok


def test_box_without_batch_import_uses_add_with_import(tmp_path):
    p = make_pair(batch_import=False)
    try:
        delta, m, users, report, box = _run(p, tmp_path)
        assert report.method == "add" and not report.failures
        assert_box_holds_exactly_the_delta(p, m)
        assert reconcile(box, delta, m, user_map=users).ok
    finally:
        p.close()


def test_lost_answers_and_a_lost_map_do_not_duplicate(pair, tmp_path):
    cloud, box = clients(pair)
    delta = export_delta(cloud, box, pair.cutoff)
    m = idmap(tmp_path)
    users = map_users(cloud, box)
    pair.box.faults.inject("DROP_AFTER_WRITE", times=2, method="batch")
    import_delta(box, delta, m, user_map=users)
    assert_box_holds_exactly_the_delta(pair, m)
    # the map is lost (a crash between box write and map write, or a new journal): rebuilt, no duplicates
    m2 = idmap(tmp_path, key="same-migration-new-journal")
    report = import_delta(box, delta, m2, user_map=users)
    assert sum(r.created for r in report.entities.values()) == 0
    assert sum(r.map_rebuilt for r in report.entities.values()) == delta.entity_records
    assert reconcile(box, delta, m2, user_map=users).ok


KILL_SCRIPT = """
import sys, datetime as dt, sqlalchemy
from connectors.bitrix24.rest import Bitrix24Client
from connectors.bitrix24.delta import export_delta
from connectors.bitrix24.importer import import_delta, map_users
from journal.idmap import IdMap
cloud = Bitrix24Client(sys.argv[1], rate=200, burst=40)
box = Bitrix24Client(sys.argv[2], rate=12, burst=1)  # slow writes: the kill lands mid-import
delta = export_delta(cloud, box, dt.datetime.fromisoformat(sys.argv[3]))
m = IdMap(sqlalchemy.create_engine("sqlite:///" + sys.argv[4]), "kill-test")
print("importing", flush=True)
import_delta(box, delta, m, user_map=map_users(cloud, box), use_batch_import=sys.argv[5] == "1")
print("done", flush=True)
"""


@pytest.mark.parametrize("batch_import", [True, False])
def test_kill_at_random_points_then_rerun(tmp_path, batch_import):
    p = make_pair(leads=300, contacts=120, companies=50, deals=150, post_fraction=0.4)
    rng = random.Random(42 if batch_import else 43)
    db = tmp_path / "journal.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", KILL_SCRIPT, p.cloud_webhook, p.box_webhook, p.cutoff.isoformat(), str(db),
            "1" if batch_import else "0"]
    try:
        kills = 0
        for _ in range(4):
            proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = proc.stdout.readline()  # wait until the import starts
            assert line.strip() == "importing", proc.stderr.read()
            time.sleep(rng.uniform(0.05, 1.5))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=30)
        assert kills >= 1
        import sqlalchemy
        from journal.idmap import IdMap

        cloud, box = clients(p)
        delta = export_delta(cloud, box, p.cutoff)
        m = IdMap(sqlalchemy.create_engine(f"sqlite:///{db}"), "kill-test")
        users = map_users(cloud, box)
        import_delta(box, delta, m, user_map=users, use_batch_import=batch_import)
        assert_box_holds_exactly_the_delta(p, m)
        assert reconcile(box, delta, m, user_map=users).ok
    finally:
        p.close()


def test_the_import_summary_lists_twins_on_the_box():
    from connectors.bitrix24.importer import EntityImport, ImportReport

    report = ImportReport(entities={"lead": EntityImport(created=1, duplicates_in_box=[str(i) for i in range(60)])})
    summary = report.summary()["lead"]
    assert summary["created"] == 1 and summary["duplicates_in_box"] == [str(i) for i in range(50)]  # bounded


def _a_pass(pair, m, users, since, backup_ids, marks, *, lose=None):
    """What a pre-sync pass moves: changes since ``since``, creations above the proof's cloud marks;
    ``lose``: a lead the export drops (a lost record the proof must find)."""
    cloud, box = clients(pair)
    d = export_delta(cloud, box, since, max_ids=backup_ids, after_ids={e: v["cloud"] for e, v in marks.items()},
                     detect_deleted=False, extras=False)
    if lose is not None:
        d.entities["lead"].rows.pop(str(lose))
    report = import_delta(box, d, m, user_map=users)
    assert not report.failures
    return d


def test_the_presence_proof_goes_on_from_its_marks(pair, tmp_path):
    """A proof leaves per-entity marks; the next one lists only what came after them (rows counted by
    the portals), finds a cloud record the export lost and a second box twin above them, and then
    leaves the marks where they were, so the range is proven again."""
    delta, m, users, report, box = _run(pair, tmp_path)
    cloud, box = clients(pair)
    backup_ids = {e: d.backup_max_id for e, d in delta.entities.items()}
    listed0 = pair.cloud.store.rows_listed + pair.box.store.rows_listed
    first = reconcile(box, delta, m, user_map=users, cloud=cloud)
    first_listed = pair.cloud.store.rows_listed + pair.box.store.rows_listed - listed0
    assert first.ok
    marks = {e: v for e, v in first.proven().items() if e in delta.entities}
    assert marks["lead"] == {"cloud": delta.entities["lead"].listed_up_to,
                             "box": max(int(r["ID"]) for r in migrated(pair, "lead"))}
    assert "activity" in first.proven()  # the timeline's activities carry marks too

    seller = {"ASSIGNED_BY_ID": "2", "CREATED_BY_ID": "2", "MODIFY_BY_ID": "2"}
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    new = [pair.cloud.store.add("lead", {"TITLE": f"made after the proof {i}", **seller}) for i in range(2)]
    d2 = _a_pass(pair, m, users, since, backup_ids, marks)
    listed0 = pair.cloud.store.rows_listed + pair.box.store.rows_listed
    second = reconcile(box, d2, m, user_map=users, cloud=cloud, proven=marks)
    second_listed = pair.cloud.store.rows_listed + pair.box.store.rows_listed - listed0
    assert second.ok, second.evidence()
    created = sum(len(v) for v in expected_delta(pair).values())
    assert first_listed >= created and second_listed < 25, (first_listed, second_listed, created)
    marks2 = second.proven()
    assert marks2["lead"]["cloud"] == max(new) and marks2["lead"]["box"] > marks["lead"]["box"]
    assert marks2["deal"] == marks["deal"]  # nothing new: the deal marks stay

    # the export loses a lead made in the cloud: the proof finds it, its marks stay
    lost = pair.cloud.store.add("lead", {"TITLE": "lost by the export", **seller})
    d3 = _a_pass(pair, m, users, since, backup_ids, marks2, lose=lost)
    third = reconcile(box, d3, m, user_map=users, cloud=cloud, proven=marks2)
    assert not third.ok and third.entities["lead"].not_moved == [str(lost)]
    assert third.proven()["lead"] == marks2["lead"]

    # a second twin on the box above the mark (a write the map never learnt of): found as a duplicate
    pair.box.store.add("lead", {"TITLE": "a second twin", "ORIGINATOR_ID": "cloud2box", "ORIGIN_ID": str(new[0]),
                                "ASSIGNED_BY_ID": "1"})
    pair.cloud.store.update("lead", new[0], {"TITLE": "changed again", **seller})
    d4 = _a_pass(pair, m, users, since, backup_ids, marks2)
    fourth = reconcile(box, d4, m, user_map=users, cloud=cloud, proven=marks2)
    assert str(new[0]) in fourth.entities["lead"].duplicates and not fourth.ok
    assert fourth.proven()["lead"] == marks2["lead"]


from hypothesis import given, strategies as st  # noqa: E402


@given(cloud=st.integers(0, 10 ** 6), box=st.integers(0, 10 ** 6), cloud_to=st.integers(0, 10 ** 6),
       box_ids=st.lists(st.integers(0, 10 ** 6), max_size=5), held=st.lists(st.integers(1, 10 ** 6), max_size=3),
       ok=st.booleans())
def test_presence_marks_never_go_back_past_what_was_proven(cloud, box, cloud_to, box_ids, held, ok):
    """A proof that listed nothing new (a pass that moved only changes: it listed up to the backup's
    mark) keeps its marks — once they went back to the backup's, and the freeze proved the whole gap's
    activities again; a proof that failed keeps them; a record held back caps the cloud mark below it."""
    from connectors.bitrix24.reconcile import advance_marks

    after = advance_marks({"cloud": cloud, "box": box}, ok, cloud_to, box_ids, held=held)
    if not ok:
        assert after == {"cloud": cloud, "box": box}
        return
    assert after["box"] == max([box, *box_ids])
    assert after["cloud"] == min([max(cloud, cloud_to), *(h - 1 for h in held)])
    if not held:
        assert after["cloud"] >= cloud and after["cloud"] >= cloud_to
