"""The config tree: the shipped example loads, bad files list every problem, secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.errors import ConfigError
from connectors.secrets import redact
from flows.config import load_config, resolve_secrets

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads():
    config = load_config(ROOT / "config.example.toml")
    assert config.migration.name == "acme"
    assert config.journal.url.startswith("sqlite")
    assert Path(config.runbook.path).name == "runbook.toml"


def test_bad_config_lists_every_problem_with_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("""
[migration]
portal = "acme.bitrix24.eu"
timezone = "Mars/Olympus"
[journal]
url = "oracle://x"
[prefect]
poll_interval_s = 0
colour = "blue"
[secrets]
cloud_webhook = { env = "X", prefect_secret = "y" }
""")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert str(bad) in text
    for key in ("migration.name", "migration.portal", "migration.timezone", "journal.url",
                "prefect.poll_interval_s", "prefect.colour", "secrets.cloud_webhook"):
        assert f"[{key}" in text, (key, text)
    assert len(err.value.problems) == 7
    assert "edit" in err.value.fix


def test_not_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("[migration\nname=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "x.toml")


def test_secrets_resolve_from_env_and_missing_ones_are_all_named(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[migration]
name = "s"
portal = "https://p.example"
[secrets]
cloud_webhook = { env = "C2B_TEST_CLOUD_CODE" }
box_webhook = { env = "C2B_TEST_BOX_CODE" }
licence = { prefect_secret = "acme-licence" }
""")
    config = load_config(cfg)
    monkeypatch.delenv("C2B_TEST_BOX_CODE", raising=False)
    monkeypatch.setenv("C2B_TEST_CLOUD_CODE", "k9v2x7q4cloudcode")
    with pytest.raises(ConfigError) as err:
        resolve_secrets(config, prefect_reader=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert [p.split("]")[0] for p in err.value.problems] == ["[secrets.box_webhook", "[secrets.licence"]
    monkeypatch.setenv("C2B_TEST_BOX_CODE", "boxcode-abc123")
    values = resolve_secrets(config, prefect_reader=lambda name: "LIC-0001-XYZ")
    assert values["cloud_webhook"].get_secret_value() == "k9v2x7q4cloudcode"
    assert "k9v2x7q4cloudcode" not in repr(values) and "k9v2x7q4cloudcode" not in str(config.snapshot())
    assert redact("url https://p.example/rest/1/k9v2x7q4cloudcode/crm.lead.list and LIC-0001-XYZ") == \
        "url https://p.example/rest/1/***/crm.lead.list and ***"


def _config(**sections):
    from flows.config import config_from_dict

    return config_from_dict({"migration": {"name": "t", "portal": "https://crm.example.com", **sections.pop(
        "migration", {})}, **sections}, source="t.toml")


def test_the_platform_fills_in_its_sections():
    """[migration] platform is said once: it tags the platform's sections and gives the box's layout."""
    from connectors import platforms

    platform = platforms.default()
    config = _config(box_host={"host": "box.example.com", "username": "u", "site_root": "/srv/portal"}, crm_delta={})
    assert config.platform is platform and config.migration.platform == platforms.DEFAULT
    assert type(config.crm_delta) is platform.crm.section and config.crm_delta.platform == platform.name
    assert type(config.post_restore) is platform.restore.post_restore_section
    layout = platform.restore.box_defaults
    assert config.box_host.site_root == "/srv/portal"  # what the file says wins
    assert config.box_host.staging_dir == layout["staging_dir"]
    assert (config.box_host.db.user, config.box_host.db.database) == (layout["db"]["user"], layout["db"]["database"])


def test_an_unknown_platform_or_a_section_of_another_platform_is_refused():
    with pytest.raises(ConfigError) as err:
        _config(migration={"platform": "nosuchcrm"}, crm_delta={})
    assert "nosuchcrm" in str(err.value) and "known:" in str(err.value)
    with pytest.raises(ConfigError) as err:
        _config(crm_delta={"platform": "nosuchcrm"})
    assert "crm_delta" in str(err.value)
