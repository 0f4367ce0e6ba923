"""Activities, timeline comments, products and deal product rows moved after the four entities,
against a sandbox cloud/box pair over HTTP. The sales team's work after the backup is made in the
cloud through its REST API (documented methods only), so the tests depend on no generator detail."""

from __future__ import annotations

import csv
import datetime as dt
import time
from collections import Counter
from decimal import Decimal

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.bitrix24 import products as prod
from connectors.bitrix24.delta import backup_marks, export_delta
from connectors.bitrix24.importer import import_delta, map_users
from connectors.bitrix24.timeline import (
    export_timeline,
    import_timeline,
    reconcile_timeline,
    timeline_marks,
    write_csvs,
)

from .crm_helpers import clients, idmap, make_pair


def rest(webhook: str, method: str, params: dict) -> dict:
    """One call straight to a portal (not the product's client), waiting out its rate limit."""
    for _ in range(100):
        body = requests.post(f"{webhook}{method}.json", json=params, timeout=30).json()
        if body.get("error") == "QUERY_LIMIT_EXCEEDED":
            time.sleep(0.2)
            continue
        assert "error" not in body, (method, body)
        return body
    raise AssertionError(f"{method}: the portal kept refusing")


def every(webhook: str, method: str, params: dict) -> list[dict]:
    """Every row of a list method, with offset paging (independent of the product's fast lists)."""
    rows, start = [], 0
    for _ in range(10_000):
        body = rest(webhook, method, {**params, "start": start})
        result = body["result"]
        rows.extend(result.get("productRows", []) if isinstance(result, dict) else result)
        if "next" not in body:
            return rows
        start = int(body["next"])
    raise AssertionError("the list did not end")


class Work:
    """What the sales team did in the cloud after the backup (the IDs the tests look at)."""

    def __init__(self, pair) -> None:
        hook = pair.cloud_webhook
        changes = pair.dataset.changes
        self.new_lead = next(c.record_id for c in changes if c.kind == "add" and c.entity == "lead")
        self.new_contact = next(c.record_id for c in changes if c.kind == "add" and c.entity == "contact")
        self.new_deal = next(c.record_id for c in changes if c.kind == "add" and c.entity == "deal")
        self.old_lead = next(c.record_id for c in changes if c.kind == "update" and c.entity == "lead")
        self.old_deal = next(c.record_id for c in changes if c.kind == "update" and c.entity == "deal")
        touched = {c.record_id for c in changes if c.entity == "lead"}
        self.untouched_lead = next(i for i in sorted(pair.dataset.backup["lead"]) if i not in touched)
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=30)
        self.call_start, self.call_end = start, start + dt.timedelta(seconds=187)
        self.phone = "+7 912 555-01-02"
        self.call = rest(hook, "crm.activity.add", {"fields": {
            "OWNER_TYPE_ID": 1, "OWNER_ID": self.new_lead, "TYPE_ID": 2, "SUBJECT": "Incoming call",
            "DIRECTION": 1, "START_TIME": start.isoformat(), "END_TIME": self.call_end.isoformat(), "COMPLETED": "Y",
            "RESPONSIBLE_ID": 2, "COMMUNICATIONS": [{"VALUE": self.phone, "TYPE": "PHONE"}]}})["result"]
        self.missed = rest(hook, "crm.activity.add", {"fields": {
            "OWNER_TYPE_ID": 1, "OWNER_ID": self.old_lead, "TYPE_ID": 2, "SUBJECT": "Missed call",
            "DIRECTION": 1, "START_TIME": start.isoformat(), "END_TIME": start.isoformat(), "COMPLETED": "Y",
            "RESPONSIBLE_ID": 3, "COMMUNICATIONS": [{"VALUE": "+49 30 1234567", "TYPE": "PHONE"}]}})["result"]
        self.mail = rest(hook, "crm.activity.add", {"fields": {
            "OWNER_TYPE_ID": 3, "OWNER_ID": self.new_contact, "TYPE_ID": 4, "SUBJECT": "Our offer",
            "DIRECTION": 2, "COMPLETED": "Y", "DESCRIPTION": "Dear customer, the offer is attached.",
            "START_TIME": start.isoformat(), "END_TIME": start.isoformat(), "RESPONSIBLE_ID": 2,
            "COMMUNICATIONS": [{"VALUE": "buyer@example.com", "TYPE": "EMAIL"}]}})["result"]
        self.meeting = rest(hook, "crm.activity.add", {"fields": {
            "OWNER_TYPE_ID": 2, "OWNER_ID": self.new_deal, "TYPE_ID": 1, "SUBJECT": "Contract talk",
            "START_TIME": start.isoformat(), "END_TIME": (start + dt.timedelta(hours=1)).isoformat(),
            "RESPONSIBLE_ID": 4, "COMMUNICATIONS": [{"VALUE": "Office", "ENTITY_TYPE_ID": 2,
                                                      "ENTITY_ID": self.new_deal}]}})["result"]
        # an activity of the backup (same ID on the box) changed after the cutoff
        self.old_activity = str(rest(hook, "crm.activity.list", {
            "filter": {"<=CREATED": pair.cutoff.isoformat(), "TYPE_ID": 2}, "order": {"ID": "ASC"},
            "select": ["ID"]})["result"][0]["ID"])
        rest(hook, "crm.activity.update", {"id": self.old_activity, "fields": {"SUBJECT": "Call (subject fixed later)"}})
        self.comment_new = self._comment(hook, "lead", self.new_lead, "Called back, =SUM(A1) wants a discount")
        self.comment_old = self._comment(hook, "lead", self.old_lead, "Old customer asked again")
        self.comment_untouched = self._comment(hook, "lead", self.untouched_lead, "Note on an untouched lead")
        self.product = rest(hook, "crm.product.add", {"fields": {"NAME": "Service plan (after backup)",
                                                                 "PRICE": 990, "CURRENCY_ID": "EUR"}})["result"]
        self.set_rows(hook, self.new_deal, [{"PRODUCT_ID": self.product, "PRICE": 990, "QUANTITY": 2},
                                            {"PRODUCT_NAME": "Installation", "PRICE": 150, "QUANTITY": 1}])
        self.set_rows(hook, self.old_deal, [{"PRODUCT_ID": self.product, "PRICE": 900, "QUANTITY": 1}])

    @staticmethod
    def _comment(hook: str, entity: str, record_id: int, text: str) -> str:
        return str(rest(hook, "crm.timeline.comment.add", {"fields": {
            "ENTITY_ID": record_id, "ENTITY_TYPE": entity, "COMMENT": text, "AUTHOR_ID": 2}})["result"])

    @staticmethod
    def set_rows(hook: str, deal_id: int, rows: list[dict]) -> None:
        rest(hook, "crm.deal.productrows.set", {"id": deal_id, "rows": rows})


class Move:
    """One migration of the pair: marks taken first, the four entities, then the timeline."""

    def __init__(self, pair, tmp_path, *, all_owners: bool = False) -> None:
        self.pair = pair
        self.cloud, self.box = clients(pair)
        self.marks = timeline_marks(self.box, pair.cutoff)  # before anything is imported
        self.entity_marks = backup_marks(self.box, pair.cutoff)
        self.idmap = idmap(tmp_path)
        self.users = map_users(self.cloud, self.box)
        self.all_owners = all_owners
        self.delta = None

    def run(self, *, settle_quiet_s: float = 0.5):
        max_ids = {e: m["max_id"] for e, m in self.entity_marks.items()}
        # the four entities alone (extras=False): the timeline is this test's to export and import
        self.delta = export_delta(self.cloud, self.box, self.pair.cutoff, max_ids=max_ids, extras=False)
        import_delta(self.box, self.delta, self.idmap, user_map=self.users)
        owners = {e: set(d.rows) for e, d in self.delta.entities.items()}
        self.tdelta = export_timeline(self.cloud, self.box, self.pair.cutoff, marks=self.marks, owners=owners,
                                      entity_max_ids=max_ids, all_owners=self.all_owners)
        self.report = import_timeline(self.box, self.tdelta, self.idmap, user_map=self.users, fallback_user_id=1,
                                      settle_quiet_s=settle_quiet_s)
        return self.report

    def reconcile(self):
        return reconcile_timeline(self.box, self.tdelta, self.idmap, user_map=self.users, fallback_user_id=1,
                                  cloud=self.cloud)

    def box_activity(self, cloud_id) -> dict:
        box_id = self.idmap.get("activity")[str(cloud_id)]
        return rest(self.pair.box_webhook, "crm.activity.list", {
            "filter": {"ID": box_id}, "select": ["*", "COMMUNICATIONS", "BINDINGS", "FILES"]})["result"][0]


@pytest.fixture
def pair():
    p = make_pair()
    yield p
    p.close()


def our_activities(pair) -> Counter:
    """ORIGIN_IDs of the box's activities written by cloud2box, counted (offset paging, raw HTTP)."""
    return Counter(str(r["ORIGIN_ID"]) for r in every(pair.box_webhook, "crm.activity.list", {
        "filter": {"ORIGINATOR_ID": "cloud2box"}, "select": ["ID", "ORIGIN_ID"], "order": {"ID": "ASC"}}))


def comments_on(pair, entity: str, record_id) -> list[str]:
    return [r["COMMENT"] for r in every(pair.box_webhook, "crm.timeline.comment.list", {
        "filter": {"ENTITY_ID": record_id, "ENTITY_TYPE": entity}, "order": {"ID": "ASC"}})]


def test_full_move_reconciles_and_a_second_run_writes_nothing(pair, tmp_path):
    work = Work(pair)
    move = Move(pair, tmp_path)
    report = move.run()
    assert not report.failures, report.failures
    assert move.tdelta.activity_kind[str(work.call)] == "created"
    for cloud_id in (work.call, work.missed, work.mail, work.meeting):
        assert str(cloud_id) in move.idmap.get("activity")
    rec = move.reconcile()
    assert rec.ok, rec.evidence()
    assert rec.entities["activity"].matched == len(move.tdelta.activities) >= 4
    assert max(our_activities(pair).values()) == 1
    # the new lead's comment is on its box twin; the product is in the catalogue, the rows on the deals
    box_lead = move.idmap.get("lead")[str(work.new_lead)]
    assert comments_on(pair, "lead", box_lead).count("Called back, =SUM(A1) wants a discount") == 1
    box_product = move.idmap.get("product")[str(work.product)]
    box_deal = move.idmap.get("deal")[str(work.new_deal)]
    rows = every(pair.box_webhook, "crm.item.productrow.list", {"filter": {"=ownerType": "D", "=ownerId": box_deal}})
    assert sorted((str(r["productId"]), Decimal(str(r["price"])), Decimal(str(r["quantity"]))) for r in rows) == \
        sorted([(box_product, Decimal(990), Decimal(2)), ("0", Decimal(150), Decimal(1))])
    # a second run: nothing is written, nothing doubles
    before = (our_activities(pair), comments_on(pair, "lead", box_lead))
    again = import_timeline(move.box, move.tdelta, move.idmap, user_map=move.users, fallback_user_id=1)
    assert again.written == 0 and sum(e.created for e in again.entities.values()) == 0, again.summary()
    assert (our_activities(pair), comments_on(pair, "lead", box_lead)) == before
    assert move.reconcile().ok
    # the review files: private, formulas neutralised
    files = write_csvs(move.tdelta, tmp_path / "csv")
    assert {f.name for f in files} == {f"crm-delta-{k}.csv" for k in ("activity", "comment", "product", "productrow")}
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600
        with f.open(encoding="utf-8", newline="") as fh:
            assert all(not c.startswith(("=", "+", "-", "@")) for row in csv.reader(fh) for c in row)


def test_a_call_arrives_with_duration_direction_phone_and_an_email_is_not_sent_again(pair, tmp_path):
    work = Work(pair)
    move = Move(pair, tmp_path)
    move.run()
    call = move.box_activity(work.call)
    start, end = (dt.datetime.fromisoformat(call[k]) for k in ("START_TIME", "END_TIME"))
    assert (end - start).total_seconds() == 187 and start == work.call_start
    assert str(call["DIRECTION"]) == "1" and str(call["TYPE_ID"]) == "2"
    assert [c["VALUE"] for c in call["COMMUNICATIONS"]] == [work.phone]
    box_lead = move.idmap.get("lead")[str(work.new_lead)]
    assert (str(call["OWNER_TYPE_ID"]), str(call["OWNER_ID"])) == ("1", box_lead)
    assert str(call["RESPONSIBLE_ID"]) == move.users.get("2", "1")
    missed = move.box_activity(work.missed)  # on a backup lead: same ID on the box; duration 0
    assert str(missed["OWNER_ID"]) == str(work.old_lead) and missed["START_TIME"] == missed["END_TIME"]
    # the outgoing e-mail was added as not completed (a completed one is sent) and completed after
    mail = move.box_activity(work.mail)
    assert mail["COMPLETED"] == "Y" and str(mail["DIRECTION"]) == "2"
    assert move.report.entities["activity"].updated >= 1
    # a cloud call with a recording: its link (without the sign-in parameter) is in the description
    cloud_calls = every(pair.cloud_webhook, "crm.activity.list", {"filter": {"TYPE_ID": 2}, "select": ["*", "FILES"]})
    recorded = [r for r in cloud_calls if r.get("FILES") and move.tdelta.activity_kind.get(str(r["ID"])) == "created"]
    assert recorded
    for row in recorded:
        description = move.box_activity(row["ID"])["DESCRIPTION"]
        for f in row["FILES"]:
            assert f"Call record in the cloud: {f['url'].split('?')[0]}?" in description
            assert f"fileId={f['id']}" in description and "auth=" not in description
    # a call of the backup changed after the cutoff: the box's own copy (same ID) is updated
    assert move.tdelta.activity_kind[work.old_activity] == "modified"
    old = rest(pair.box_webhook, "crm.activity.get", {"id": work.old_activity})["result"]
    assert old["SUBJECT"] == "Call (subject fixed later)" and not old.get("ORIGINATOR_ID")
    assert "in the cloud:" not in old["DESCRIPTION"]  # its recording came with the backup
    assert work.old_activity not in our_activities(pair)


def test_comments_on_backup_records(pair, tmp_path):
    work = Work(pair)
    move = Move(pair, tmp_path)
    move.run()
    # a backup lead changed after the cutoff: its new comment is found and moved (same ID on the box)
    assert comments_on(pair, "lead", work.old_lead).count("Old customer asked again") == 1
    # a backup lead nothing else changed: not found by default (the list needs the owner) …
    assert work.comment_untouched not in move.tdelta.comments
    assert "Note on an untouched lead" not in comments_on(pair, "lead", work.untouched_lead)
    # … but with every record's comments listed it is
    (tmp_path / "wide").mkdir()
    wide = Move(pair, tmp_path / "wide", all_owners=True)
    wide.marks, wide.entity_marks = move.marks, move.entity_marks  # journaled once, before the first import
    wide.run()
    assert comments_on(pair, "lead", work.untouched_lead).count("Note on an untouched lead") == 1
    assert comments_on(pair, "lead", work.old_lead).count("Old customer asked again") == 1  # not twice
    assert wide.reconcile().ok


def test_lost_answers_cause_no_duplicate(pair, tmp_path):
    work = Work(pair)
    move = Move(pair, tmp_path)
    max_ids = {e: m["max_id"] for e, m in move.entity_marks.items()}
    move.delta = export_delta(move.cloud, move.box, pair.cutoff, max_ids=max_ids, extras=False)
    import_delta(move.box, move.delta, move.idmap, user_map=move.users)
    owners = {e: set(d.rows) for e, d in move.delta.entities.items()}
    move.tdelta = export_timeline(move.cloud, move.box, pair.cutoff, marks=move.marks, owners=owners,
                                  entity_max_ids=max_ids)
    # the sandbox's DROP_AFTER_WRITE (executed, then the connection closed) on the first write
    # request of each kind — products, rows, activities, comments — not on the reads between them
    send = move.box.batch
    dropped: list[str] = []

    def batch(cmd, *, halt=False, idempotent=True):
        method = next(iter(cmd.values())).partition("?")[0]
        if not idempotent and method not in dropped:
            dropped.append(method)
            pair.box.faults.inject("DROP_AFTER_WRITE", method="batch")
        return send(cmd, halt=halt, idempotent=idempotent)

    move.box.batch = batch
    report = import_timeline(move.box, move.tdelta, move.idmap, user_map=move.users, settle_quiet_s=0.5)
    assert {"crm.product.add", "crm.deal.productrows.set", "crm.activity.add", "crm.activity.update",
            "crm.timeline.comment.add"} <= set(dropped)
    assert report.unknown_outcomes >= 5 and pair.box.faults.fired["DROP_AFTER_WRITE"] >= 5
    assert set(our_activities(pair).values()) == {1}
    assert set(our_activities(pair)) >= {str(work.call), str(work.mail), str(work.meeting)}
    box_lead = move.idmap.get("lead")[str(work.new_lead)]
    assert comments_on(pair, "lead", box_lead).count("Called back, =SUM(A1) wants a discount") == 1
    products = every(pair.box_webhook, "crm.product.list", {"filter": {"NAME": "Service plan (after backup)"},
                                                             "select": ["ID"]})
    assert len(products) == 1
    assert move.reconcile().ok


def test_reconciliation_fails_loudly_when_an_activity_is_deleted_on_the_box(pair, tmp_path):
    work = Work(pair)
    move = Move(pair, tmp_path)
    move.run()
    box_id = move.idmap.get("activity")[str(work.meeting)]
    rest(pair.box_webhook, "crm.activity.delete", {"id": box_id})
    rec = move.reconcile()
    assert not rec.ok and rec.entities["activity"].missing == [str(work.meeting)]
    assert rec.evidence()["activity"]["ok"] is False
    # the next run puts it back, once
    import_timeline(move.box, move.tdelta, move.idmap, user_map=move.users)
    assert our_activities(pair)[str(work.meeting)] == 1 and move.reconcile().ok


ROW = st.fixed_dictionaries({
    "kind": st.sampled_from(["new product", "by name"]),
    "price": st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False, allow_infinity=False),
    "quantity": st.integers(min_value=1, max_value=50)})


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=0, max_size=4))
def test_changed_rows_on_an_old_deal_arrive(pair, tmp_path_factory, rows):
    """Rows of a backup deal changed in the cloud after the cutoff replace the box's, whatever they are;
    every example is one more run of the same migration (the map and the box carry over)."""
    if not hasattr(pair, "_timeline_move"):
        pair._timeline_work = Work(pair)
        pair._timeline_move = Move(pair, tmp_path_factory.mktemp("rows"))
    work, move = pair._timeline_work, pair._timeline_move
    cloud_rows = [{"PRODUCT_ID": work.product, "PRICE": str(r["price"]), "QUANTITY": r["quantity"]}
                  if r["kind"] == "new product" else
                  {"PRODUCT_NAME": f"Item {i}", "PRICE": str(r["price"]), "QUANTITY": r["quantity"]}
                  for i, r in enumerate(rows)]
    Work.set_rows(pair.cloud_webhook, work.old_deal, cloud_rows)
    move.run()
    box_product = move.idmap.get("product")[str(work.product)]
    have = every(pair.box_webhook, "crm.item.productrow.list",
                 {"filter": {"=ownerType": "D", "=ownerId": work.old_deal}})  # a backup deal: same ID
    want = Counter((box_product if r["kind"] == "new product" else "0", r["price"], Decimal(r["quantity"]))
                   for r in rows)
    assert Counter((str(h["productId"]) if str(h["productId"]) != "0" else "0", Decimal(str(h["price"])),
                    Decimal(str(h["quantity"]))) for h in have) == want
    assert move.reconcile().entities["productrow"].ok


@given(rows=st.lists(st.fixed_dictionaries({
    "id": st.integers(1, 10_000), "productId": st.sampled_from([0, 3, 7, 501]),
    "productName": st.sampled_from(["A", "B", "Ünïcode"]),
    "price": st.decimals(min_value=0, max_value=10_000, places=2), "quantity": st.decimals(min_value=1, max_value=99,
                                                                                           places=3),
    "discountTypeId": st.sampled_from([1, 2]), "discountRate": st.just(0), "discountSum": st.just(0),
    "taxRate": st.sampled_from([None, 0, 20]), "taxIncluded": st.sampled_from(["Y", "N"]),
    "sort": st.integers(0, 100)}), max_size=6))
def test_rows_written_read_back_compare_equal(rows):
    """What crm.deal.productrows.set gets, read back in crm.item.productrow.list's names, has the
    signature of the cloud's rows with products remapped (501 is not on the box: a row by name)."""
    pmap = {"3": "30", "7": "7"}
    written, unresolved = prod.set_rows(rows, {**pmap, "501": None})
    assert set(unresolved) == {"501"} & {str(r["productId"]) for r in rows}
    read_back = prod._as_read(written)
    assert prod.rows_multiset(read_back) == prod.rows_multiset(rows, {**pmap, "501": None})
    expected = [{**r, "productId": int(pmap.get(str(r["productId"]), 0)) if r["productId"] else 0} for r in rows]
    assert prod._row_signature(read_back) == prod._row_signature(expected)
