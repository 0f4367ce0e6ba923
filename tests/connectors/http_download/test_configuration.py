"""The [backup] section: defaults, validation, the snippet given for config.example.toml, and the
section's class picked by ``source``."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from connectors import platforms
from connectors.bitrix24.configuration import Bitrix24BackupSection
from connectors.errors import ConfigError
from connectors.http_download import UrlsBackupSection
from flows.config import config_from_dict

SNIPPET = """
[backup]
source = "bitrix24"
info_url = "https://www.1c-bitrix.ru/buy_tmp/backup.php"
licence_key_secret = "backup_licence_key"
password_secret = "backup_password"
dest_dir = "backup"

[backup.download]
connections = 8
chunk_mib = 8

[backup.mirror]
host = "files.acme.example"
username = "backup"
key_file = "~/.ssh/id_ed25519"
path = "/srv/backup"
"""


def test_snippet_loads_with_safe_defaults():
    section = Bitrix24BackupSection.model_validate(tomllib.loads(SNIPPET)["backup"])
    assert section.download.chunk_size == 8 * 2**20
    assert section.mirror.strict_host_key is True and section.mirror.port == 22


def test_problems_are_reported():
    with pytest.raises(ValidationError, match="part_urls"):
        UrlsBackupSection(source="urls")
    with pytest.raises(ValidationError, match="http"):
        Bitrix24BackupSection(info_url="ftp://files.example/backup.php")
    with pytest.raises(ValidationError):
        Bitrix24BackupSection.model_validate({"download": {"connections": 0}})
    with pytest.raises(ValidationError):
        Bitrix24BackupSection.model_validate({"mirror": {"host": "h", "username": "u", "path": "/", "typo": 1}})


def _backup(section: dict, **migration):
    return config_from_dict({"migration": {"name": "t", "portal": "https://crm.example.com", **migration},
                             "backup": section}).backup


def test_the_source_picks_the_section_class():
    urls = _backup({"source": "urls", "part_urls": ["https://files.example/b.tar.gz"]})
    assert type(urls) is UrlsBackupSection and urls.part_urls == ["https://files.example/b.tar.gz"]
    for name in platforms.names():  # no source: the migration's platform delivers the backup itself
        own = _backup({"dest_dir": "parts"}, platform=name)
        assert type(own) is platforms.get(name).delivery.section and own.source == name
    assert type(_backup({})) is platforms.default().delivery.section


def test_an_unknown_source_names_the_known_ones():
    with pytest.raises(ConfigError) as err:
        _backup({"source": "nope"})
    message = str(err.value)
    assert "'nope'" in message and all(repr(tag) in message for tag in ["urls", *platforms.names()])
