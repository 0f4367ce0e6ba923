"""Where backup parts come from: the :class:`BackupSource` interface and the plain URL-list source.

The platform's own delivery (``connectors.platform.BackupDelivery``) makes another :class:`BackupSource`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

import requests

from connectors.errors import FatalError, TransientError
from connectors.secrets import redact

from .http import classify_response, map_requests_errors


@dataclass(frozen=True)
class RemotePart:
    """One part to fetch: its name, size, where it is and what it must hash to (if known)."""

    name: str
    size: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # e.g. the vendor's signed header
    sha256: str | None = None
    md5: str | None = None


class BackupSource(Protocol):
    """A family of backup delivery: lists the parts of one backup."""

    def list_parts(self) -> list[RemotePart]:
        """Every part, in order, with its size and location."""
        ...


class UrlListSource:
    """Parts given as plain URLs; sizes by ``HEAD``; an optional manifest of sha256/md5 per part.

    Args:
        urls: one URL per part, named ``NAME.tar.gz``, ``NAME.tar.gz.1`` … by their last segment.
        manifest: ``{part name: {"sha256": …, "md5": …}}`` or the URL of such a JSON document.
    """

    def __init__(self, urls: list[str], *, manifest: dict | str | None = None, session: requests.Session | None = None,
                 timeout: tuple[float, float] = (10, 60)) -> None:
        self.urls = list(urls)
        self.manifest = manifest
        self.session = session or requests.Session()
        self.timeout = timeout

    def _manifest(self) -> dict:
        if not self.manifest:
            return {}
        if isinstance(self.manifest, dict):
            return self.manifest
        with map_requests_errors(f"the manifest {redact(self.manifest)}"):
            resp = self.session.get(self.manifest, timeout=self.timeout)
        classify_response(resp, what=f"the manifest {redact(self.manifest)}")
        try:
            data = resp.json()
        except ValueError:
            raise FatalError(f"the manifest {redact(self.manifest)} is not JSON",
                             fix="point manifest_url at a JSON document {part: {sha256, md5}}") from None
        return data.get("parts", data) if isinstance(data, dict) else {}

    def list_parts(self) -> list[RemotePart]:
        manifest = self._manifest()
        parts = []
        for url in self.urls:
            name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
            with map_requests_errors(f"part {name}"):
                resp = self.session.head(url, timeout=self.timeout, allow_redirects=True)
            classify_response(resp, what=f"part {name}")
            try:
                size = int(resp.headers["Content-Length"])
            except (KeyError, ValueError):
                raise TransientError(f"the server gave no size for part {name}",
                                     fix="check that the URL serves the part itself") from None
            entry = manifest.get(name, {}) if isinstance(manifest, dict) else {}
            parts.append(RemotePart(name, size, url, sha256=entry.get("sha256"), md5=entry.get("md5")))
        return parts

