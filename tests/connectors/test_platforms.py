"""The platform registry: every platform provides every family, and one package plus one registry
line is all a new platform needs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import BaseModel

from connectors import platform as proto
from connectors import platforms, secrets
from connectors.errors import ConfigError
from connectors.secrets import redact

FAMILIES = {"format": proto.BackupFormat, "delivery": proto.BackupDelivery, "restore": proto.RestoreSpec,
            "crm": proto.CrmEndpoint, "error_codes": proto.ErrorCodes, "events": proto.CrmEvents,
            "checks": proto.PlatformChecks}
OPTIONAL = {"events", "checks"}


@pytest.fixture
def registry(monkeypatch):
    """The registry (and the redaction patterns it registers) restored after the test."""
    monkeypatch.setattr(platforms, "_loaded", dict(platforms._loaded))
    monkeypatch.setattr(secrets, "_patterns", list(secrets._patterns))
    monkeypatch.setattr(platforms, "_REGISTRY", dict(platforms._REGISTRY))
    return platforms


@pytest.mark.parametrize("name", platforms.names())
def test_every_platform_provides_every_family(name):
    p = platforms.get(name)
    assert p.name == name and platforms.get(name) is p
    for family, protocol in FAMILIES.items():
        value = getattr(p, family)
        if value is None and family in OPTIONAL:
            continue
        assert isinstance(value, protocol), f"{name}.{family} is not a {protocol.__name__}"
    for section in (p.delivery.section, p.crm.section, p.restore.post_restore_section):
        assert issubclass(section, BaseModel)
    assert p.crm.entities and all(isinstance(e, str) for e in p.crm.entities)
    for pattern in p.redaction:
        assert pattern.groups >= 2


def test_the_default_platform_is_registered():
    assert platforms.DEFAULT in platforms.names()
    assert platforms.default() is platforms.get(platforms.DEFAULT)


def test_an_unknown_platform_names_the_known_ones():
    with pytest.raises(ConfigError) as info:
        platforms.get("nosuchcrm", source="c2b.toml")
    assert "nosuchcrm" in str(info.value) and all(n in str(info.value) for n in platforms.names())
    assert info.value.source == "c2b.toml"


FAKE = '''
"""A CRM platform in one module: everything it needs to take part."""
import re
from pathlib import Path
from pydantic import BaseModel
from connectors.platform import Platform

from typing import Literal
from pydantic import ConfigDict

class Section(BaseModel):  # [crm_delta] and [post_restore]: tagged by the platform's name
    model_config = ConfigDict(extra="forbid")
    platform: Literal["fakecrm"] = "fakecrm"
    token_secret: str = "fake_token"

class BackupSection(BaseModel):  # [backup]: tagged by its source
    source: Literal["fakecrm"] = "fakecrm"
    token_secret: str = "fake_token"
    dest_dir: Path = Path("backup")

class Format:
    header_len, header_members = 8, 1
    size_field, count_field = "SIZE", "COUNT"
    def parse_header(self, head): return type("H", (), {"size": int(head), "last_part": None})()
    def part_number(self, name): return int(name.rsplit(".", 1)[1]) if name[-1].isdigit() else None
    def check_part_names(self, names): return []
    def check_part_count(self, names, last_part): return []

class Delivery:
    section = BackupSection
    def source(self, section, secret, problems): return secret(section.token_secret, problems, "the token")

class Restore:
    agent_source, box_defaults, dump_hint, post_restore_section = Path(__file__), {}, "dump.sql", Section
    def dump_order(self, files): return sorted(files)
    def post_restore(self, sql, settings, *, domain): return []

class Crm:
    entities, section = ("ticket",), Section
    def endpoints(self, section, secrets, migration, *, source, budget=None): return ("cloud", "box")
    def export(self, cloud, box, cutoff, **kw): return []
    def write_review_files(self, delta, out_dir): return []
    def map_users(self, cloud, box): return {}
    def import_delta(self, box, delta, idmap, **kw): return None
    def reconcile(self, box, delta, idmap, **kw): return None
    def backup_marks(self, box, cutoff, *, entities, skip_ours=False):
        return {e: {"max_id": 0, "count": 0} for e in entities}
    def sweep(self, cloud, box, idmap, history, **kw): return None
    def presync(self, cloud, box, idmap, history, *, scan_deleted, **kw): return None
    def backlog(self, cloud, since, *, entities): return {}

class Codes:
    def kind_of(self, code): return {"SLOW": "rate"}.get(code)

PLATFORM = Platform(name="fakecrm", format=Format(), delivery=Delivery(), restore=Restore(), crm=Crm(),
                    error_codes=Codes(), redaction=(re.compile(r"(/fake-api/)(\\w+)"),))
'''


def test_one_package_and_one_registry_line_make_a_platform(registry, tmp_path, monkeypatch):
    package = tmp_path / "fakecrm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "platform.py").write_text(textwrap.dedent(FAKE))
    monkeypatch.syspath_prepend(str(tmp_path))

    registry._REGISTRY["fakecrm"] = "fakecrm.platform"  # the one line

    assert "fakecrm" in registry.names()
    test_every_platform_provides_every_family("fakecrm")
    fake = registry.get("fakecrm")
    assert fake.error_codes.kind_of("SLOW") == "rate" and fake.events is None
    assert redact("GET https://crm.example.com/fake-api/s3cr3tToken/tickets") == \
        "GET https://crm.example.com/fake-api/***/tickets"


def test_the_config_tells_the_platforms_sections_apart(tmp_path):
    """With a second platform registered, [migration] platform picks its sections from the union
    (a fresh interpreter: the config builds its unions from the registry when it is imported)."""
    package = tmp_path / "fakecrm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "platform.py").write_text(textwrap.dedent(FAKE))
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from connectors import platforms
        platforms._REGISTRY["fakecrm"] = "fakecrm.platform"
        from connectors.errors import ConfigError
        from flows.config import config_from_dict
        def load(platform, **sections):
            return config_from_dict({{"migration": {{"name": "t", "portal": "https://crm.example.com",
                                                     "platform": platform}}, **sections}})
        fake = load("fakecrm", crm_delta={{}}, backup={{}})
        assert type(fake.crm_delta).__module__ == "fakecrm.platform", type(fake.crm_delta)
        assert type(fake.backup).__name__ == "BackupSection" and fake.platform.name == "fakecrm"
        assert type(fake.post_restore).__module__ == "fakecrm.platform"
        default = load(platforms.DEFAULT, crm_delta={{}}, backup={{}})
        assert type(default.crm_delta) is platforms.default().crm.section
        assert type(default.backup) is platforms.default().delivery.section
        try:
            load("fakecrm", crm_delta={{"rate": 2}})
        except ConfigError as exc:
            assert "[crm_delta.rate]" in str(exc), exc  # the fake's section has no rate: no tag in the key
        else:
            raise AssertionError("another platform's key was accepted")
        try:
            load("fakecrm", crm_delta={{"platform": platforms.DEFAULT}})
        except ConfigError as exc:
            assert "does not fit [migration] platform = 'fakecrm'" in str(exc), exc
        else:
            raise AssertionError("another platform's section was accepted")
        """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_platform_module_must_define_a_named_platform(registry, tmp_path, monkeypatch):
    (tmp_path / "wrongcrm.py").write_text("PLATFORM = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._REGISTRY["wrongcrm"] = "wrongcrm"
    with pytest.raises(TypeError, match="must be a connectors.platform.Platform"):
        registry.get("wrongcrm")


def test_the_platforms_load_without_prefect():
    code = ("import sys, connectors.platforms as p; p.load_all(); "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'prefect'], 'prefect imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_platform_credentials_are_masked_with_only_secrets_imported():
    """A fresh interpreter, no flow and no config: the first redact loads every platform's patterns."""
    code = ("from connectors.secrets import redact; "
            "print(redact('GET https://p.example/rest/1/abcdefcode/crm.lead.list.json'))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "GET https://p.example/rest/1/***/crm.lead.list.json"
