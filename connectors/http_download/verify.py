"""Verify a backup part while it is written: hashes and the gzip structure, in one pass.

Every byte goes through :meth:`PartVerifier.update` in file order, right after it is written, so
no second read of the part is needed. The structural check needs no manifest: each part is one
or more gzip members that must inflate with the right CRC32 and length (the inflater checks both
trailers), and the inflated size must equal the size the part's header states (its size field),
read by the platform's :class:`~connectors.platform.BackupFormat`.

What the structure covers, without a manifest: the deflate data, the CRC32 and length trailers,
the gzip magic, method and flags, and the header's size. Not covered — only a manifest's or an
ETag's hash sees a change there: each member's mtime, XFL and OS bytes (4–9 of a member), the
FTEXT flag and the rare deflate bits whose change still decodes to the same bytes (the padding to
a byte boundary, unused code lengths), none of which changes one restored byte; and the first
part's part-count field. So the header is reported only in the :class:`VerifyResult` of a part that
passed every check, and its part count is proven only when a hash check is listed there too.

Memory per verifier, whatever the chunk size or the compression ratio (a part of zeros inflates
1000-fold): at most :data:`MEMORY_BOUND` bytes (2.75 MiB) besides the caller's chunk — one output
step of :data:`_MAX_OUT` bytes, counted and dropped (twice that while the stdlib zlib joins the
blocks it inflated into), up to two copies of one input piece of :data:`_IN_STEP` bytes (the input
the inflater left unread, the next member's first bytes) and the inflater's state and 32 KiB window.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from connectors.errors import IntegrityError
from connectors.platform import BackupFormat, PartHeaderInfo

try:  # zlib-ng inflates 1.5-3 times faster than zlib and refuses exactly what zlib refuses
    from zlib_ng import zlib_ng as _inflater
except ImportError:  # pragma: no cover - zlib-ng is a dependency; zlib keeps the verifier working without it
    _inflater = zlib

INFLATER = _inflater.__name__
_INFLATE_ERRORS = (zlib.error, _inflater.error)
_IN_STEP = 256 * 1024  # input bytes per inflate call: bounds the copy the inflater keeps of unread input
_MAX_OUT = 2**20  # output bytes per inflate call: a part of zeros inflates 1000-fold
_GZIP_RESERVED_FLAGS = 0xE0  # zlib and GNU gzip refuse a member with these set (checked here too, for any inflater)
MEMORY_BOUND = 2 * _MAX_OUT + 2 * _IN_STEP + 256 * 1024  # see the module docstring


@dataclass(frozen=True)
class VerifyResult:
    """What a verified part proved."""

    size: int
    sha256: str
    md5: str  # "" when neither a manifest nor an ETag asked for it
    data_size: int  # inflated bytes (equals the header's size field)
    members: int  # gzip members, including the header member(s)
    header: PartHeaderInfo  # size proven by bx-size; part count only by a hash check (sha256-manifest, md5-*)
    checks: tuple[str, ...]  # which checks passed, e.g. ("gzip", "bx-size", "sha256-manifest")


class PartVerifier:
    """Hash and inflate one part as it streams by.

    Args:
        name: the part's name (for messages).
        expected_size: bytes the part must have.
        fmt: the platform's backup format: reads the part's header (size, last part number).
        sha256, md5: expected hashes from a manifest, when there is one.
        etag_md5: a single-part S3-style ETag (the part's md5), when the server gives one. It may
            also be set before the first byte is fed; one learnt later is not checked (md5 is
            computed only when something will compare it).
        on_header: called once with the part's header (``fmt.parse_header``) from :meth:`finish`, after
            every check passed (never with a header read from unverified bytes).
    """

    def __init__(self, name: str, expected_size: int, *, fmt: BackupFormat, sha256: str | None = None,
                 md5: str | None = None, etag_md5: str | None = None,
                 on_header: Callable[[PartHeaderInfo], None] | None = None) -> None:
        self.name = name
        self.expected_size = expected_size
        self.fmt = fmt
        self.want_sha256 = sha256.lower() if sha256 else None
        self.want_md5 = md5.lower() if md5 else None
        self.on_header = on_header
        self.fed = 0
        self.members = 0
        self.data_size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5() if self.want_md5 else None
        self._etag_md5: str | None = None
        self.etag_md5 = etag_md5
        self._head = bytearray()
        self._header: PartHeaderInfo | None = None
        self._member = None  # the inflater of the gzip member being read
        self._member_fed = 0  # input bytes the current member consumed so far

    @property
    def etag_md5(self) -> str | None:
        return self._etag_md5

    @etag_md5.setter
    def etag_md5(self, value: str | None) -> None:
        self._etag_md5 = value.lower() if value else None
        if self._etag_md5 and self._md5 is None and self.fed == 0:
            self._md5 = hashlib.md5()

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(f"backup part {self.name} is corrupt: {what}",
                              fix=f"fetch {self.name} again (from the SSH mirror or the vendor); never restore from it")

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes of the part (in file order). Raises IntegrityError at the first
        structural error, so a broken part is known before the rest of it arrives.

        ``data`` is only read during the call (never kept), so the caller may reuse its buffer.
        """
        size = len(data)
        if not size:
            return
        start = self.fed
        if start + size > self.expected_size:
            raise self._fail(f"more than the {self.expected_size} bytes listed for it")
        self.fed += size
        view = memoryview(data).cast("B")
        header_len = self.fmt.header_len
        if len(self._head) < header_len:
            self._head += view[:header_len - len(self._head)]
            if len(self._head) == header_len:
                try:
                    self._header = self.fmt.parse_header(bytes(self._head))
                except ValueError as exc:
                    raise self._fail(f"bad part header: {exc}") from None
        try:
            for offset in range(0, size, _IN_STEP):  # each piece is hashed and inflated while in cache
                piece = view[offset:offset + _IN_STEP]
                self._sha256.update(piece)
                if self._md5 is not None:
                    self._md5.update(piece)
                self._inflate(piece)
        except _INFLATE_ERRORS as exc:
            raise self._fail(f"gzip data broken near byte {start} ({exc})") from None

    def _inflate(self, piece: memoryview | bytes) -> None:
        """Inflate one input piece, member after member, in output steps of at most _MAX_OUT.

        Ends because every turn consumes input or emits a full step of output, and an output step
        is only repeated while the inflater still has output pending.
        """
        while True:
            if self._member is None:
                self._member = _inflater.decompressobj(31)
                self._member_fed = 0
            member = self._member
            if self._member_fed <= 3 < self._member_fed + len(piece) \
                    and piece[3 - self._member_fed] & _GZIP_RESERVED_FLAGS:
                raise self._fail(f"a gzip member near byte {self.fed} has reserved header flags set")
            out = len(member.decompress(piece, _MAX_OUT))
            self.data_size += out
            if member.eof:
                rest = member.unused_data  # the next member's first bytes
                self._member_fed += len(piece) - len(rest)
                self.members += 1
                self._member = None
                if not rest:
                    return
            else:
                rest = member.unconsumed_tail  # input left unread because the output step was full
                self._member_fed += len(piece) - len(rest)
                if not rest and out < _MAX_OUT:
                    return
            piece = rest

    def finish(self) -> VerifyResult:
        """All bytes were fed: check the end of the gzip stream, the header size, length and hashes;
        then (and only then) report the header."""
        checks: list[str] = []
        if self.fed != self.expected_size:
            raise self._fail(f"{self.fed} bytes, expected {self.expected_size} (short part)")
        if self._header is None:
            raise self._fail("shorter than a part header")
        if self._member is not None:
            raise self._fail("the last gzip member is truncated (no CRC32/length trailer)")
        if self.members <= self.fmt.header_members:
            raise self._fail("no data after the header member")
        checks.append("gzip-crc32-length")
        if self.data_size != self._header.size:
            raise self._fail(f"inflates to {self.data_size} bytes but its {self.fmt.size_field} field says "
                             f"{self._header.size}")
        checks.append("bx-size")
        sha256 = self._sha256.hexdigest()
        md5 = self._md5.hexdigest() if self._md5 is not None else ""
        if self.want_sha256:
            if sha256 != self.want_sha256:
                raise self._fail(f"sha256 {sha256} does not match the manifest's {self.want_sha256}")
            checks.append("sha256-manifest")
        if self.want_md5:
            if md5 != self.want_md5:
                raise self._fail(f"md5 {md5} does not match the manifest's {self.want_md5}")
            checks.append("md5-manifest")
        if self.etag_md5 and md5:
            if md5 != self.etag_md5:
                raise self._fail(f"md5 {md5} does not match the server's ETag {self.etag_md5}")
            checks.append("md5-etag")
        result = VerifyResult(self.fed, sha256, md5, self.data_size, self.members, self._header, tuple(checks))
        if self.on_header:
            self.on_header(result.header)
        return result


def etag_md5(etag: str | None) -> str | None:
    """The md5 in an S3-style single-part ETag (``"<32 hex>"``); None for multipart/weak ETags."""
    if not etag:
        return None
    tag = etag.strip()
    if tag.startswith("W/"):
        return None
    tag = tag.strip('"')
    return tag.lower() if len(tag) == 32 and all(c in "0123456789abcdefABCDEF" for c in tag) else None
