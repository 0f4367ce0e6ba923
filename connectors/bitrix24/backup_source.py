"""The vendor's backup delivery protocol (what the vendor's restore.php does).

1. ``backup.php?license=md5(KEY)&action=get_info`` → XML, one ``<file name="…" size="…"/>`` per part.
2. per part ``action=read_file&file_name=…&check_word=md5('BITRIXCLOUDSERVICE'.PASSWORD)`` → the
   storage host, path and signed headers the part is downloaded with (HTTP Range works there).

The licence key, the password and everything derived from them (the md5 in the URL, the check
word, the signed headers) are registered as secrets: they never reach logs or the journal.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from urllib.parse import urlencode, urlsplit

import requests
from pydantic import SecretStr

from connectors.errors import FatalError
from connectors.http_download.http import classify_response, map_requests_errors
from connectors.http_download.source import RemotePart
from connectors.secrets import register_secret

from .backup_format import split_part_name


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _secret(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class Bitrix24BackupSource:
    """List and locate the parts of the portal's cloud backup.

    Args:
        info_url: the ``backup.php`` endpoint.
        licence_key, password: the portal's licence key and the backup password.
        session: a ``requests.Session`` (tests and the sandbox plug in here).
    """

    def __init__(self, info_url: str, licence_key: SecretStr | str, password: SecretStr | str, *,
                 session: requests.Session | None = None, timeout: tuple[float, float] = (10, 60)) -> None:
        self.info_url = info_url
        self._licence = _md5(_secret(licence_key))
        self._check_word = _md5("BITRIXCLOUDSERVICE" + _secret(password))
        for value in (_secret(licence_key), _secret(password), self._licence, self._check_word):
            register_secret(value)
        self.session = session or requests.Session()
        self.timeout = timeout
        self.scheme = urlsplit(info_url).scheme or "https"

    def _call(self, what: str, **params: str) -> ET.Element:
        url = f"{self.info_url}?{urlencode({'license': self._licence, **params})}"
        with map_requests_errors(what):
            resp = self.session.get(url, timeout=self.timeout)
        classify_response(resp, what=what)
        try:
            root = ET.fromstring(resp.content)
        except ET.ParseError:
            raise FatalError(f"{what}: the backup service did not answer with XML",
                             fix="check info_url; the service may be down — try again later") from None
        if root.tag == "error":
            raise FatalError(f"{what}: the backup service says {root.text}",
                             fix="check the licence key and backup password secrets")
        return root

    def part_names(self) -> list[tuple[str, int]]:
        """(name, size) of every part as ``get_info`` lists them; nothing is located or fetched."""
        root = self._call("the backup's part list (get_info)", action="get_info")
        return [(f.get("name", ""), int(f.get("size", "0"))) for f in root.iter("file")]

    def list_parts(self) -> list[RemotePart]:
        files = self.part_names()
        if not files:
            raise FatalError("the backup service lists no backup parts",
                             fix="ask the vendor's support whether the backup was made; request it again")
        parts = []
        for name, size in sorted(files, key=lambda f: (split_part_name(f[0]) or ("", 10**9))[1]):
            url, headers = self.locate(name)
            parts.append(RemotePart(name, size, url, headers=headers))
        return parts

    def locate(self, name: str) -> tuple[str, dict[str, str]]:
        """Where part ``name`` is downloaded from: (URL, signed headers)."""
        root = self._call(f"the location of part {name} (read_file)", action="read_file", file_name=name,
                          check_word=self._check_word)
        host, path = root.findtext("host"), root.findtext("path")
        if not host or not path:
            raise FatalError(f"the backup service gave no location for part {name}",
                             fix="request the backup again from the vendor's support")
        headers = {h.get("name", ""): (h.text or "") for h in root.iter("header") if h.get("name")}
        for value in headers.values():
            register_secret(value)
        return f"{self.scheme}://{host}{path}", headers
