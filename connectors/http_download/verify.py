"""Verify a backup part while it is written: hashes and the gzip structure, in one pass.

Every byte goes through :meth:`PartVerifier.update` in file order, right after it is written, so
no second read of the part is needed. The structural check needs no manifest: each part is one
or more gzip members that must inflate with the right CRC32 and length (zlib checks both
trailers), and the inflated size must equal the part's ``BX`` field.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Callable

from connectors.bitrix24.backup_format import HEADER_LEN, PartHeader, parse_header
from connectors.errors import IntegrityError

_MAX_OUT = 4 * 2**20  # inflate in bounded pieces: a highly compressible SQL dump must not blow up RAM


@dataclass(frozen=True)
class VerifyResult:
    """What a verified part proved."""

    size: int
    sha256: str
    md5: str
    data_size: int  # inflated bytes (equals the BX field)
    members: int  # gzip members, including the header member
    header: PartHeader
    checks: tuple[str, ...]  # which checks passed, e.g. ("gzip", "bx-size", "sha256-manifest")


class PartVerifier:
    """Hash and inflate one part as it streams by.

    Args:
        name: the part's name (for messages).
        expected_size: bytes the part must have.
        sha256, md5: expected hashes from a manifest, when there is one.
        etag_md5: a single-part S3-style ETag (the part's md5), when the server gives one.
        on_header: called once with the part's :class:`PartHeader` as soon as it is known
            (the downloader checks the first part's LN marker early).
    """

    def __init__(self, name: str, expected_size: int, *, sha256: str | None = None, md5: str | None = None,
                 etag_md5: str | None = None, on_header: Callable[[PartHeader], None] | None = None) -> None:
        self.name = name
        self.expected_size = expected_size
        self.want_sha256 = sha256.lower() if sha256 else None
        self.want_md5 = md5.lower() if md5 else None
        self.etag_md5 = etag_md5.lower() if etag_md5 else None
        self.on_header = on_header
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5()
        self._head = bytearray()
        self.header: PartHeader | None = None
        self._inflate: zlib._Decompress | None = None
        self._between_members = True
        self.members = 0
        self.data_size = 0
        self.fed = 0

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(f"backup part {self.name} is corrupt: {what}",
                              fix=f"fetch {self.name} again (from the SSH mirror or the vendor); never restore from it")

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next bytes of the part (in file order). Raises IntegrityError at the first
        structural error, so a broken part is known before the rest of it arrives."""
        if not data:
            return
        self._sha256.update(data)
        self._md5.update(data)
        start = self.fed
        self.fed += len(data)
        if self.fed > self.expected_size:
            raise self._fail(f"more than the {self.expected_size} bytes listed for it")
        if self.header is None:
            self._head += bytes(data[:HEADER_LEN - len(self._head)])
            if len(self._head) >= HEADER_LEN:
                try:
                    self.header = parse_header(bytes(self._head))
                except ValueError as exc:
                    raise self._fail(f"bad part header: {exc}") from None
                if self.on_header:
                    self.on_header(self.header)
        buf = bytes(data)
        try:
            while buf:
                if self._inflate is None:
                    self._inflate = zlib.decompressobj(31)
                out = self._inflate.decompress(buf, _MAX_OUT)
                self.data_size += len(out)
                while self._inflate.unconsumed_tail:
                    out = self._inflate.decompress(self._inflate.unconsumed_tail, _MAX_OUT)
                    self.data_size += len(out)
                if self._inflate.eof:
                    self.members += 1
                    buf = self._inflate.unused_data
                    self._inflate = None
                else:
                    buf = b""
        except zlib.error as exc:
            raise self._fail(f"gzip data broken near byte {start} ({exc})") from None

    def finish(self) -> VerifyResult:
        """All bytes were fed: check the end of the gzip stream, BX size, length and hashes."""
        checks: list[str] = []
        if self.fed != self.expected_size:
            raise self._fail(f"{self.fed} bytes, expected {self.expected_size} (short part)")
        if self.header is None:
            raise self._fail("shorter than a part header")
        if self._inflate is not None:
            raise self._fail("the last gzip member is truncated (no CRC32/length trailer)")
        if self.members < 2:
            raise self._fail("no data after the header member")
        checks.append("gzip-crc32-length")
        if self.data_size != self.header.size:
            raise self._fail(f"inflates to {self.data_size} bytes but its BX field says {self.header.size}")
        checks.append("bx-size")
        sha256, md5 = self._sha256.hexdigest(), self._md5.hexdigest()
        if self.want_sha256:
            if sha256 != self.want_sha256:
                raise self._fail(f"sha256 {sha256} does not match the manifest's {self.want_sha256}")
            checks.append("sha256-manifest")
        if self.want_md5:
            if md5 != self.want_md5:
                raise self._fail(f"md5 {md5} does not match the manifest's {self.want_md5}")
            checks.append("md5-manifest")
        if self.etag_md5:
            if md5 != self.etag_md5:
                raise self._fail(f"md5 {md5} does not match the server's ETag {self.etag_md5}")
            checks.append("md5-etag")
        return VerifyResult(self.fed, sha256, md5, self.data_size, self.members, self.header, tuple(checks))


def etag_md5(etag: str | None) -> str | None:
    """The md5 in an S3-style single-part ETag (``"<32 hex>"``); None for multipart/weak ETags."""
    if not etag:
        return None
    tag = etag.strip()
    if tag.startswith("W/"):
        return None
    tag = tag.strip('"')
    return tag.lower() if len(tag) == 32 and all(c in "0123456789abcdefABCDEF" for c in tag) else None
