"""StepCounters: one typed contract between the actions that write counters and their readers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from journal.counters import StepCounters
from journal.store import Journal


def test_a_writer_cannot_invent_a_key():
    with pytest.raises(ValidationError, match="byte_per_s"):
        StepCounters(bytes=10, byte_per_s=1.0)


def test_stored_as_the_measured_fields_with_the_writers_types(tmp_path):
    download = StepCounters(bytes=4_000, bytes_fetched=4_100, bytes_per_s=812.5, parts=2, parts_repaired=0, retries=1)
    assert download.as_dict() == {"bytes": 4_000, "bytes_fetched": 4_100, "bytes_per_s": 812.5, "parts": 2,
                                  "parts_repaired": 0, "retries": 1}
    delta = StepCounters(records=412.0, records_per_s=3100.0, created=400.0)
    assert delta.as_dict() == {"records": 412.0, "records_per_s": 3100.0, "created": 400.0}
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    run, _ = journal.open_run(name="acme", portal="https://acme.example.invalid", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    ex = journal.start_step(run.id, step_id="2.3", phase=2, seq=0, title="t", owner="contractor", urgency="high",
                            action="download_backup", planned_duration_s=60, planned_start=None)
    assert journal.finish_step(ex, outcome="done", counters=download).counters == download.as_dict()
    assert StepCounters.read(journal.steps(run.id)[0].counters) == download


def test_read_keeps_what_it_can_use_from_an_older_journal():
    old = {"records": 412, "leads": 300, "deals": 112, "bytes_per_s": "fast", "rate_samples": [1.0, 2.0]}
    c = StepCounters.read(old)
    assert c.as_dict() == {"records": 412.0, "rate_samples": [1.0, 2.0]}
    assert StepCounters.read(None) == StepCounters.read({}) == StepCounters()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*StepCounters.model_fields, "leads", "x"]),
                       st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=3),
                                 st.lists(st.floats(allow_nan=False), max_size=3))))
def test_read_never_fails(raw):
    c = StepCounters.read(raw)
    assert set(c.as_dict()) <= set(raw) - {"leads", "x"}


@pytest.mark.parametrize("counters, amount, rate", [
    ({"bytes": 4_000_000, "bytes_per_s": 1_000.0}, ("bytes", 4e6), 1_000.0),  # download
    ({"bytes": 4_000_000, "restore_mb_per_s": 2.5}, ("bytes", 4e6), 2.5e6),  # restore
    ({"bytes": 4_000_000, "bytes_per_s": 0.0}, ("bytes", 4e6), None),  # zero is no rate
    ({"records": 412.0, "records_per_s": 3100.0}, ("records", 412.0), 3100.0),  # delta
    ({"bytes": 0, "records": 5.0}, ("records", 5.0), None),
    ({"checks": 3, "failed": 0}, None, None),  # nothing that scales
])
def test_amount_and_rate(counters, amount, rate):
    c = StepCounters.read(counters)
    assert c.amount() == amount
    assert c.rate(amount[0] if amount else "bytes") == rate
