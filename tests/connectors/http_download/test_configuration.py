"""The [backup] section: defaults, validation, and the snippet given for config.example.toml."""

from __future__ import annotations

import tomllib

import pytest
from pydantic import ValidationError

from connectors.http_download import BackupSection

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
    section = BackupSection.model_validate(tomllib.loads(SNIPPET)["backup"])
    assert section.download.chunk_size == 8 * 2**20
    assert section.mirror.strict_host_key is True and section.mirror.port == 22


def test_problems_are_reported():
    with pytest.raises(ValidationError, match="part_urls"):
        BackupSection(source="urls")
    with pytest.raises(ValidationError):
        BackupSection.model_validate({"download": {"connections": 0}})
    with pytest.raises(ValidationError):
        BackupSection.model_validate({"mirror": {"host": "h", "username": "u", "path": "/", "typo": 1}})
