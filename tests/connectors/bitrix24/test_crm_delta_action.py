"""The action ``transfer_crm_delta`` (step 2.11) with a real journal and a sandbox pair.
(Lives here because it exercises the connector end to end; no Prefect involved.)"""

import pytest
from pydantic import SecretStr

from connectors.errors import ConfigError, IntegrityError, TransientError
from connectors.secrets import register_secret
from flows.actions import ActionContext
from flows.actions.crm_delta import cutoff_of, transfer_crm_delta
from journal.events import EventKind
from journal.store import Journal
from tests.flows.actions.helpers import action_config

from .crm_helpers import make_pair


@pytest.fixture
def pair():
    p = make_pair()
    yield p
    p.close()


def _ctx(pair, tmp_path, journal, run_id, *, migration: dict | None = None, **section):
    config = action_config(crm_delta={"rate": 150, "burst": 40, "box_rate": 150, "box_burst": 40, **section},
                           migration={"name": "acme", "portal": "http://127.0.0.1", **(migration or {})})
    register_secret(pair.cloud_webhook)
    register_secret(pair.box_webhook)
    secrets = {"cloud_webhook": SecretStr(pair.cloud_webhook), "box_webhook": SecretStr(pair.box_webhook)}
    return ActionContext(config=config, secrets=secrets, journal=journal, run_id=run_id, step_id="2.11",
                         mode="rehearsal", work_dir=tmp_path)


def test_action_moves_the_delta_with_evidence(pair, tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    journal.set_cutoff(run.id, pair.cutoff)
    result = transfer_crm_delta(_ctx(pair, tmp_path, journal, run.id))
    assert result.evidence["reconciliation_ok"] is True
    assert result.counters.records > 0 and result.counters.records_per_s > 0
    assert result.counters.deleted_in_cloud == 1
    assert (tmp_path / "crm-delta" / "crm-delta-lead.csv").exists()
    kinds = {e.kind for e in journal.events(run.id)}
    assert {"crm_delta_export", "crm_reconciliation", "crm_deleted_in_cloud", "crm_fallback_users"} <= kinds
    everything = repr(result) + "".join(repr(e.data) + e.message for e in journal.events(run.id))
    everything += "".join(p.read_text() for p in (tmp_path / "crm-delta").iterdir())
    assert pair.cloud_code not in everything and pair.box_code not in everything
    # again: nothing new to write, still reconciled
    again = transfer_crm_delta(_ctx(pair, tmp_path, journal, run.id))
    assert again.counters.created == 0 and again.evidence["reconciliation_ok"]
    assert not journal.events(run.id, EventKind.CRM_DUPLICATES_IN_BOX)
    # a twin on the box (as if an earlier run had written a record twice) fails the reconciliation
    # and is journaled for the customer to decide
    moved = next(str(r["ORIGIN_ID"]) for r in pair.box.store.tables["lead"].values()
                 if r.get("ORIGINATOR_ID") == "cloud2box")
    pair.box.store.add("lead", {"TITLE": "twin", "ORIGINATOR_ID": "cloud2box", "ORIGIN_ID": moved})
    with pytest.raises(IntegrityError, match="reconciliation found 1 problem"):
        transfer_crm_delta(_ctx(pair, tmp_path, journal, run.id))
    [twins] = journal.events(run.id, EventKind.CRM_DUPLICATES_IN_BOX)
    assert twins.data["cloud_ids"] == {"lead": [moved]}


def test_action_without_cutoff_or_secrets_says_what_to_fix(pair, tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    with pytest.raises(ConfigError, match="cutoff"):
        transfer_crm_delta(_ctx(pair, tmp_path, journal, run.id))
    ctx = _ctx(pair, tmp_path, journal, run.id, cutoff=pair.cutoff.isoformat())
    ctx.secrets.pop("box_webhook")
    with pytest.raises(ConfigError, match="box_webhook"):
        transfer_crm_delta(ctx)


def test_secret_may_hold_only_the_code(pair, tmp_path):
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    ctx = _ctx(pair, tmp_path, journal, run.id, cutoff=pair.cutoff.isoformat(), detect_deleted=False,
               migration={"portal": pair.cloud.base_url, "box_portal": pair.box.base_url})
    ctx.secrets = {"cloud_webhook": SecretStr(pair.cloud_code), "box_webhook": SecretStr(pair.box_code)}
    result = transfer_crm_delta(ctx)
    assert result.evidence["reconciliation_ok"] and "***" in result.evidence["cloud"]
    assert pair.cloud_code not in repr(result)


def test_only_a_missing_run_means_no_cutoff_a_journal_outage_is_not_that(tmp_path, monkeypatch):
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    ctx = ActionContext(config=action_config(crm_delta={}), secrets={}, journal=journal, run_id="no-such-run",
                        step_id="2.11", mode="rehearsal", work_dir=tmp_path)
    section = ctx.config.crm_delta
    with pytest.raises(ConfigError, match="cutoff is not set"):
        cutoff_of(ctx, section)

    def outage(run_id):
        raise TransientError("the journal database did not answer", fix="check the journal's database")

    monkeypatch.setattr(journal, "get_run", outage)
    with pytest.raises(TransientError, match="did not answer"):
        cutoff_of(ctx, section)


def test_a_failed_transfer_says_which_step_to_run_again(pair, tmp_path, monkeypatch):
    from connectors import platforms

    def box_down(*args, **kwargs):
        raise TransientError("box: lead writes kept failing with unknown outcome (8 rounds)",
                             fix="check the box's health")

    monkeypatch.setattr(platforms.get("bitrix24").crm, "import_delta", box_down)
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}")
    run, _ = journal.open_run(name="acme", portal="http://127.0.0.1", mode="rehearsal", timezone="UTC",
                              config_snapshot={})
    ctx = _ctx(pair, tmp_path, journal, run.id, cutoff=pair.cutoff.isoformat())
    ctx.step_id = "2.12"  # the runbook decides the step, not the connector
    with pytest.raises(TransientError) as caught:
        transfer_crm_delta(ctx)
    assert caught.value.message.startswith("box: lead writes kept failing")
    assert caught.value.fix == "check the box's health, then run step 2.12 again: it continues safely"
