"""The vendor's delivery protocol against the sandbox backup server."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr

from connectors.bitrix24.backup_source import Bitrix24BackupSource
from connectors.errors import AuthError
from connectors.secrets import redact
from sandbox.backup_maker import make_backup
from sandbox.backup_server import BackupServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    made = make_backup(tmp_path_factory.mktemp("b24"), total_bytes=900_000, part_size=256 * 1024)
    with BackupServer(made.directory, rate=0, licence_key="LIC-0123-4567-89AB", password="s3cret-backup-pw") as srv:
        srv.made = made
        yield srv


def test_lists_parts_in_order_with_signed_locations(server):
    parts = Bitrix24BackupSource(server.info_url, SecretStr(server.licence_key), SecretStr(server.password)).list_parts()
    assert [p.name for p in parts] == [p.name for p in server.made.parts]
    assert [p.size for p in parts] == [p.size for p in server.made.parts]
    assert all(p.url.startswith(server.url + "/storage/") and p.headers for p in parts)


def test_wrong_licence_or_password_is_an_auth_error(server):
    with pytest.raises(AuthError):
        Bitrix24BackupSource(server.info_url, "WRONG-KEY-000", server.password).list_parts()
    with pytest.raises(AuthError, match="refused the credentials"):
        Bitrix24BackupSource(server.info_url, server.licence_key, "wrong-password").list_parts()


def test_credentials_and_what_derives_from_them_are_redacted(server):
    source = Bitrix24BackupSource(server.info_url, server.licence_key, server.password)
    parts = source.list_parts()
    derived = [server.licence_key, server.password, hashlib.md5(server.licence_key.encode()).hexdigest(),
               hashlib.md5(("BITRIXCLOUDSERVICE" + server.password).encode()).hexdigest(),
               *parts[0].headers.values()]
    text = redact(" ".join(derived))
    assert not any(value in text for value in derived)
