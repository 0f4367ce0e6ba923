"""Make a multi-part backup in the vendor's format, written from the vendor's facts alone.

Nothing here imports the product: the layout comes from DESIGN.md ("Backup delivery and format")
and the vendor's archiver, class ``CTar`` (``bitrix/modules/main/classes/general/backup.php``);
comments name the ``CTar::`` method each choice comes from. GNU tar and gzip judge the result.

- :func:`write_parts` wraps any tar byte stream into parts ``NAME.tar.gz``, ``NAME.tar.gz.1`` …:
  the empty header member with the ``BX`` size (and the first part's ``LN``), data appended as
  gzip members in archiver steps, cut at the part limit, optionally encrypted (AES or Blowfish).
- :func:`tar_member` writes one member the way ``CTar::addFile``/``writeHeader`` do (old-style
  header, unpadded octal, GNU ``L`` long names); link members exist only for hostile tests.
- :func:`make_backup` writes a deterministic portal: site settings, uploaded files, a GNU
  long-name file and the database dump ``bitrix/backup/NAME.sql`` (optionally split into
  ``.sql.1`` …) + ``NAME_after_connect.sql``, with content of a chosen compressibility, optional
  long/deep names and optional hostile members.

The dump carries the Bitrix tables the post-restore step fixes, with the faults of the case: no
portal domain (``b_option`` main/server_name, ``b_lang``), push & pull switched off (``b_option``
pull/nginx, push), empty search tables (``b_search_content``: the vendor dumps it empty), and
Bitrix24.Network users (``b_user.EXTERNAL_AUTH_ID``); and the installed marketplace apps
(``b_rest_app``, :data:`SANDBOX_REST_APPS`) a post-migration check looks for.

Usage: ``python -m sandbox.backup_maker OUT_DIR --size 8M --part-size 2M --seed 1``
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

BLOCK = 512
DEFAULT_NAME = "portal_20261123_000000_full_c2b"
MTIME = 1_763_856_000
OWNER_ID = 600  # uid/gid of the vendor's "bitrix" user: written as unpadded octal "1130"

# CTar::createEmptyGzipExtra starts every part with this literal ("buggy zlib 1.2.7"): a gzip
# header without flags, then a stored empty block (00 00 00 ff ff), a final empty fixed block
# (03 00), CRC32 0 and ISIZE 0. It sets FLG.FEXTRA and inserts XLEN 10 + "\0\0\0\0BX0000" after
# the 10-byte header; CTar::close later overwrites offset 18 (the part's size) and, in the first
# part, offset 12 ("LN" + last part number).
_ZLIB_127_EMPTY = bytes.fromhex("1f8b0800000000000003" "000000ffff0300" "0000000000000000")
_BX_EXTRA = b"\0\0\0\0" + b"BX0000"
HEADER_MEMBER = (_ZLIB_127_EMPTY[:3] + b"\x04" + _ZLIB_127_EMPTY[4:10]
                 + struct.pack("<H", len(_BX_EXTRA)) + _BX_EXTRA + _ZLIB_127_EMPTY[10:])
LN_OFFSET, BX_SIZE_OFFSET = 12, 18

ENCRYPTION_SIGNATURE = b"Bitrix Encrypted File"  # CTar::BX_SIGNATURE
CIPHERS = ("aes-256-ecb", "bf-ecb")  # CTar::getCryptoAlgorithmList, the writer's default first
ENCRYPTION_VERSIONS = ("1.2", "1.1", "1.0")  # 1.2 with PHP openssl (today), 1.1 without, 1.0 oldest
HOSTILE_KINDS = ("symlink", "symlink_chain", "hardlink", "dotdot", "absolute")


@dataclass(frozen=True)
class MadePart:
    name: str
    path: Path
    size: int  # bytes of the part file
    data_size: int  # uncompressed bytes in it (the BX field; the encryption block included)
    sha256: str
    md5: str


@dataclass
class BackupSet:
    """What :func:`make_backup` wrote."""

    directory: Path
    base: str  # NAME.tar.gz (NAME.enc.gz when encrypted, as the vendor names it)
    parts: list[MadePart]
    tar_size: int  # uncompressed bytes of all parts (the encryption block included)
    tar_sha256: str  # of the plain tar stream (before encryption)
    files: dict[str, str] = field(default_factory=dict)  # regular member path → sha256 of its content
    dirs: list[str] = field(default_factory=list)  # directory members, without the trailing "/"
    hostile: list[str] = field(default_factory=list)  # member names that must never be restored as is

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.parts)

    def manifest(self) -> dict[str, dict]:
        """``{part name: {"size", "sha256", "md5"}}`` — what a plain source's manifest holds."""
        return {p.name: {"size": p.size, "sha256": p.sha256, "md5": p.md5} for p in self.parts}


# --- part names --------------------------------------------------------------------------------

# restore.php lists archives matching \.(tar|enc)(\.gz)?$; CTar::getNextName numbers the next
# parts .1, .2 … (no leading zeros)
_PART_RE = re.compile(r"^(?P<base>.+\.(?:tar|enc)(?:\.gz)?)(?:\.(?P<n>[1-9][0-9]*))?$")


def part_file_name(base: str, number: int) -> str:
    """``NAME.tar.gz`` for part 0, ``NAME.tar.gz.N`` after (CTar::getNextName)."""
    return base if number == 0 else f"{base}.{number}"


def parse_part_name(name: str) -> tuple[str, int] | None:
    """``(base, number)`` for a vendor part name, None for anything else."""
    m = _PART_RE.match(name)
    return (m.group("base"), int(m.group("n") or 0)) if m else None


# --- tar members (CTar::writeHeader, CTar::addFile) --------------------------------------------

def _oct(value: int) -> bytes:
    return b"%o" % value  # PHP decoct(): no zero padding, no terminator


def _field(value: bytes, width: int) -> bytes:
    return value[:width].ljust(width, b"\0")  # PHP pack("aN"): NUL-padded, cut at N


def tar_header(name: bytes, *, size: int, type: bytes = b"0", mode: int = 0o644, uid: int = OWNER_ID,
               gid: int = OWNER_ID, mtime: int = MTIME, linkname: bytes = b"") -> bytes:
    """One 512-byte header as CTar::writeHeader packs it: ``a100a8a8a8a12a12`` (name, then mode,
    uid, gid, size, mtime as unpadded octal), the checksum as ``pack("a8", decoct(sum))``, then
    ``a1a100a6a2a32a32a8a8a155`` (type, link, an empty magic and version, …, prefix)."""
    head0 = (_field(name, 100) + _field(_oct(mode), 8) + _field(_oct(uid), 8) + _field(_oct(gid), 8)
             + _field(_oct(size), 12) + _field(_oct(mtime), 12))
    head1 = _field(type, 1) + _field(linkname, 100) + b"\0" * (6 + 2 + 32 + 32 + 8 + 8 + 155)
    checksum = sum(head0) + 8 * ord(" ") + sum(head1)  # CTar::checksum: the checksum field as spaces
    return (head0 + _field(_oct(checksum), 8) + head1).ljust(BLOCK, b"\0")


def _member_chunks(name: str | bytes, data: bytes, *, type: str, linkname: str | bytes, mode: int | None,
                   mtime: int) -> Iterator[bytes]:
    raw = name.encode() if isinstance(name, str) else name
    link = linkname.encode() if isinstance(linkname, str) else linkname
    kind = type.encode()
    if mode is None:
        mode = 0o755 if kind == b"5" else 0o777 if kind == b"2" else 0o644
    size = len(data) if kind == b"0" else 0  # CTar::getFileInfo: a directory's size is 0
    if len(raw) > 100:
        # CTar::addFile: a '././@LongLink' header of type L whose size is the name's length (no NUL
        # counted), the name in the next block (pack "a512"; CTar refuses names over 512 bytes, longer
        # ones here take more blocks as GNU tar's own do), then the header with the first 100 bytes
        yield tar_header(b"././@LongLink", size=len(raw), type=b"L", mode=mode, mtime=mtime)
        yield raw + b"\0" * (-len(raw) % BLOCK)
    yield tar_header(raw, size=size, type=kind, mode=mode, mtime=mtime, linkname=link)
    if size:
        yield data
        if size % BLOCK:
            yield b"\0" * (-size % BLOCK)  # CTar::addFile: the last block pack("a512")-padded


def tar_member(name: str | bytes, data: bytes = b"", *, type: str = "0", linkname: str | bytes = "",
               mode: int | None = None, mtime: int = MTIME) -> bytes:
    """One member as CTar::addFile writes it: header(s) plus data padded to 512 bytes.

    Args:
        name: the member path as it goes in the archive; CTar gives directories a trailing "/"
            (pass it) and writes no leading "/" or "..": such names are hostile input.
        type: "0" file, "5" directory (the vendor's only two: CTar::getFileInfo stat()s through
            links); "2" symlink and "1" hard link (``linkname`` = target) exist only for hostile tests.
        mode: permission bits (default 0644 files, 0755 directories, 0777 links).
    """
    if type not in ("0", "5", "1", "2"):
        raise ValueError(f"tar type {type!r}: CTar writes 0 and 5; 1 and 2 are offered for hostile tests")
    return b"".join(_member_chunks(name, data, type=type, linkname=linkname, mode=mode, mtime=mtime))


# --- encryption (CTar::openWrite, CTar::encrypt) -----------------------------------------------

def encryption_key(password: str) -> bytes:
    """CTar::getEncryptKey: md5(password) as 32 hex characters, used as the raw key bytes."""
    return hashlib.md5(password.encode()).hexdigest().encode()


def _cipher(cipher: str, key: bytes):
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if cipher == "aes-256-ecb":
        return Cipher(algorithms.AES(key), modes.ECB())
    if cipher == "bf-ecb":
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish
        except ImportError:  # cryptography < 43 kept it with the other algorithms
            from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish
        # PHP's openssl_encrypt sets Blowfish's key length to the key given: all 32 bytes count
        return Cipher(Blowfish(key), modes.ECB())
    raise ValueError(f"cipher {cipher!r}: the vendor's are {', '.join(CIPHERS)}")


def encryption_block(password: str, *, cipher: str = "aes-256-ecb", version: str = "1.2",
                     archive_id: str | None = None) -> bytes:
    """The first 512 bytes of an encrypted archive (CTar::openWrite): ``pack("a100a90a10a56",
    md5(uniqid), 'Bitrix Encrypted File', version, '')`` followed by encrypt() of those 256 bytes —
    how the vendor's reader finds the cipher and tells a wrong password."""
    ident = (archive_id or hashlib.md5(password.encode() + version.encode()).hexdigest()).encode()
    plain = _field(ident, 100) + _field(ENCRYPTION_SIGNATURE, 90) + _field(version.encode(), 10) + b"\0" * 56
    enc = _cipher(cipher, encryption_key(password)).encryptor()
    return plain + enc.update(plain) + enc.finalize()


def _encrypted(chunks: Iterable[bytes], password: str, cipher: str, version: str,
               archive_id: str | None) -> Iterator[bytes]:
    yield encryption_block(password, cipher=cipher, version=version, archive_id=archive_id)
    # CTar::flushBuffer encrypts 51 200-byte buffers; ECB keeps blocks independent, so one
    # stream over any chunking gives the same bytes
    algo = _cipher(cipher, encryption_key(password))
    enc = algo.encryptor()
    total = 0
    for chunk in chunks:
        total += len(chunk)
        out = enc.update(chunk)
        if out:
            yield out
    pad = -total % (algo.algorithm.block_size // 8)  # CTar::encrypt zero-pads the tail (no padding mode)
    yield enc.update(b"\0" * pad) + enc.finalize()


# --- parts (CTar::open, writeBlock, close) -----------------------------------------------------

class _PartWriter:
    """Streams bytes into part files: a new part when ``limit`` bytes are in (CTar::writeBlock),
    a new gzip member at every ``member_step`` bytes of the stream (each archiver step's
    gzopen('ab')) and at every part start."""

    def __init__(self, out: Path, base: str, limit: int, member_step: int | None, level: int,
                 empty_members: bool) -> None:
        self.out, self.base, self.limit, self.level = out, base, limit, level
        self.step = member_step or None
        self.empty_members = empty_members
        self.sizes: list[int] = []
        self._file = None
        self._comp = None
        self._in_part = 0
        self._offset = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None:
                self._open_part()
            room = self.limit - self._in_part
            if self.step:
                room = min(room, self.step - self._offset % self.step)
            piece = view[:room]
            if self._comp is None:
                self._comp = zlib.compressobj(self.level, zlib.DEFLATED, 31)  # a standard gzip member, mtime 0
            self._file.write(self._comp.compress(piece))
            self._in_part += len(piece)
            self._offset += len(piece)
            view = view[len(piece):]
            if self.step and self._offset % self.step == 0:
                self._end_member()
            if self._in_part == self.limit:
                self._end_part()

    def close(self) -> int:
        """Finish the last part; returns the number of parts."""
        if self._file is None and not self.sizes:
            self._open_part()  # CTar::openWrite creates the first part even for no data
        if self._file is not None:
            self._end_part()
        last = len(self.sizes) - 1
        if last:
            # CTar::close on part N writes "LN" + pack("v", N) at offset 12 of the first part
            with open(self.out / self.base, "r+b") as f:
                f.seek(LN_OFFSET)
                f.write(b"LN" + struct.pack("<H", last & 0xFFFF))
        return len(self.sizes)

    def _open_part(self) -> None:
        self._file = open(self.out / part_file_name(self.base, len(self.sizes)), "wb")
        self._file.write(HEADER_MEMBER)  # CTar::open → createEmptyGzipExtra for a new part
        self._in_part = 0

    def _end_member(self) -> None:
        if self._comp is not None:
            self._file.write(self._comp.flush())
            self._comp = None
            if self.empty_members:  # a step that wrote nothing still leaves a member (gzclose)
                empty = zlib.compressobj(self.level, zlib.DEFLATED, 31)
                self._file.write(empty.flush())

    def _end_part(self) -> None:
        self._end_member()
        # CTar::close writes the part's uncompressed size, pack("V"), at offset 18
        self._file.seek(BX_SIZE_OFFSET)
        self._file.write(struct.pack("<I", self._in_part & 0xFFFFFFFF))
        self._file.close()
        self._file = None
        self.sizes.append(self._in_part)


def _made_part(path: Path, data_size: int) -> MadePart:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return MadePart(path.name, path, path.stat().st_size, data_size, sha.hexdigest(), md5.hexdigest())


def write_parts(out_dir: str | Path, base: str, tar_chunks: Iterable[bytes], *, part_size: int,
                member_step: int | None = 256 * 1024, level: int = 1, encrypt_password: str | None = None,
                encrypt_cipher: str = "aes-256-ecb", encrypt_version: str = "1.2",
                archive_id: str | None = None, empty_members: bool = False) -> list[MadePart]:
    """Write any tar byte stream as the vendor's parts ``base``, ``base.1`` … into ``out_dir``.

    Each part starts with the vendor's empty header member (``BX`` = the part's uncompressed
    bytes; in the first part ``LN`` = the last part's number once there are several); the data
    follows as gzip members. Concatenated, the parts are one multi-member gzip of the stream.

    Args:
        base: the first part's name, e.g. ``NAME.tar.gz`` (the vendor names encrypted ones ``NAME.enc.gz``).
        tar_chunks: the tar stream in pieces of any size (e.g. what :func:`tar_member` or Python's
            tarfile writes); the vendor's is whole 512-byte blocks.
        part_size: uncompressed bytes per part (ArchiveSizeLimit; a multiple of 512, the
            encryption block included); the last part holds the rest.
        member_step: uncompressed bytes between gzip member starts, counted over the whole stream
            (the archiver's steps); a part start also starts a member. None: one member per part.
        level: zlib level of the data members (the vendor's is 6; 1 keeps big backups quick).
        encrypt_password: encrypt like the vendor (before gzip): the 512-byte encryption block
            first, then the stream in ECB with key md5(password).
        encrypt_cipher: "aes-256-ecb" (the vendor's default today) or "bf-ecb" (older archives).
        encrypt_version: the version the encryption block claims: "1.2" today, "1.1", "1.0"
            (any other string up to 10 bytes, for tests of what a reader refuses).
        archive_id: the block's random id (md5(uniqid) in CTar); default derived from the password.
        empty_members: after each data member add an empty one, as an archiver step that wrote
            nothing leaves.

    Raises:
        ValueError: part_size is not a positive multiple of 512, or an unknown cipher.
    """
    if part_size <= 0 or part_size % BLOCK:
        raise ValueError("part_size must be a positive multiple of 512 (CTar cuts parts between 512-byte blocks)")
    if member_step is not None and member_step < 0:
        raise ValueError("member_step must be positive (or None for one member per part)")
    if encrypt_password is not None:
        if encrypt_cipher not in CIPHERS:
            raise ValueError(f"cipher {encrypt_cipher!r}: the vendor's are {', '.join(CIPHERS)}")
        if len(encrypt_version.encode()) > 10:
            raise ValueError("the encryption block's version field holds 10 bytes")
        tar_chunks = _encrypted(tar_chunks, encrypt_password, encrypt_cipher, encrypt_version, archive_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # CTar::openWrite would append to them: start clean
        if (parse_part_name(stale.name) or ("",))[0] == base:
            stale.unlink()
    writer = _PartWriter(out, base, part_size, member_step, level, empty_members)
    for chunk in tar_chunks:
        writer.write(chunk)
    writer.close()
    return [_made_part(out / part_file_name(base, n), size) for n, size in enumerate(writer.sizes)]


_PORTAL_TABLES = [
    "CREATE TABLE `b_option` (`MODULE_ID` varchar(50) NOT NULL, `NAME` varchar(100) NOT NULL, `VALUE` mediumtext,"
    " `DESCRIPTION` varchar(255), `SITE_ID` char(2), UNIQUE KEY `ix_option` (`MODULE_ID`,`NAME`,`SITE_ID`));",
    "INSERT INTO `b_option` (`MODULE_ID`,`NAME`,`VALUE`) VALUES ('main','server_name',''),"
    "('main','site_name','Sandbox portal'),('pull','nginx','N'),('pull','push','N'),('search','use_stemming','Y');",
    "CREATE TABLE `b_lang` (`LID` char(2) NOT NULL, `SORT` int NOT NULL DEFAULT 100, `DEF` char(1) NOT NULL DEFAULT 'N',"
    " `ACTIVE` char(1) NOT NULL DEFAULT 'Y', `NAME` varchar(50) NOT NULL, `DIR` varchar(50) NOT NULL,"
    " `SERVER_NAME` varchar(255), PRIMARY KEY (`LID`));",
    "INSERT INTO `b_lang` VALUES ('s1',1,'Y','Y','Sandbox portal','/','');",
    "CREATE TABLE `b_lang_domain` (`LID` char(2) NOT NULL, `DOMAIN` varchar(255) NOT NULL,"
    " PRIMARY KEY (`LID`,`DOMAIN`));",
    "CREATE TABLE `b_search_content` (`ID` int NOT NULL AUTO_INCREMENT, `MODULE_ID` varchar(50) NOT NULL,"
    " `ITEM_ID` varchar(255) NOT NULL, `TITLE` text, PRIMARY KEY (`ID`));",
    "CREATE TABLE `b_user` (`ID` int NOT NULL AUTO_INCREMENT, `LOGIN` varchar(50) NOT NULL, `EMAIL` varchar(255),"
    " `ACTIVE` char(1) NOT NULL DEFAULT 'Y', `EXTERNAL_AUTH_ID` varchar(255), PRIMARY KEY (`ID`));",
    "INSERT INTO `b_user` VALUES (1,'admin','admin@example.com','Y',NULL),"
    "(2,'anna.network','anna@example.com','Y','bitrix24'),(3,'boris.network','boris@example.com','Y','bitrix24'),"
    "(4,'sales.local','sales@example.com','Y',NULL),(5,'gone.network','gone@example.com','N','bitrix24'),"
    "(6,'imconnector','','Y','imconnector');",
    # the marketplace apps installed on the portal (the rest module's table): after the move each must
    # still be there, active and installed, or the integrations built on them stop
    "CREATE TABLE `b_rest_app` (`ID` int NOT NULL AUTO_INCREMENT, `CLIENT_ID` varchar(128) NOT NULL,"
    " `CODE` varchar(128) NOT NULL, `ACTIVE` char(1) NOT NULL DEFAULT 'Y', `INSTALLED` char(1) NOT NULL DEFAULT 'N',"
    " `URL` varchar(1000) NOT NULL DEFAULT '', `VERSION` varchar(4) DEFAULT '1', `SCOPE` varchar(2000) NOT NULL DEFAULT '',"
    " `STATUS` char(1) NOT NULL DEFAULT 'F', `APP_NAME` varchar(1000), PRIMARY KEY (`ID`),"
    " UNIQUE KEY `ux_b_rest_app1` (`CLIENT_ID`));",
    "INSERT INTO `b_rest_app` (`ID`,`CLIENT_ID`,`CODE`,`ACTIVE`,`INSTALLED`,`URL`,`VERSION`,`SCOPE`,`STATUS`,`APP_NAME`)"
    " VALUES (1,'app.c2b0000000001.10000001','c2b.telephony_connector','Y','Y','https://apps.example.com/telephony/',"
    "'3','telephony,crm,user','P','Telephony connector'),"
    "(2,'app.c2b0000000002.10000002','c2b.doc_generator','Y','Y','https://apps.example.com/docgen/',"
    "'2','crm,documentgenerator','F','Document generator'),"
    "(3,'app.c2b0000000003.10000003','c2b.whatsapp_channel','Y','Y','https://apps.example.com/whatsapp/',"
    "'1','imopenlines,imconnector,crm','P','WhatsApp channel');",
]

# what the dump's b_rest_app holds: code → name (all active and installed)
SANDBOX_REST_APPS = {"c2b.telephony_connector": "Telephony connector", "c2b.doc_generator": "Document generator",
                     "c2b.whatsapp_channel": "WhatsApp channel"}


def _sql_dump(rnd: random.Random, name: str, size: int) -> bytes:
    lines = [
        "-- Bitrix24 backup dump (sandbox)",
        *_PORTAL_TABLES,
        "CREATE TABLE `b_crm_lead` (`ID` int NOT NULL, `TITLE` varchar(255), `DATE_CREATE` datetime,"
        " `ORIGINATOR_ID` varchar(255), PRIMARY KEY (`ID`));",
    ]
    out = "\n".join(lines) + "\n"
    chunks = [out]
    total = len(out)
    lead_id = 1
    while total < size:
        row = (f"INSERT INTO `b_crm_lead` VALUES ({lead_id},'Lead {lead_id} {rnd.randrange(10**9):09d}',"
               f"'2026-0{1 + lead_id % 9}-{1 + lead_id % 28:02d} 10:{lead_id % 60:02d}:00',NULL);\n")
        chunks.append(row)
        total += len(row)
        lead_id += 1
    return "".join(chunks).encode()


def dump_statements(*, size: int = 4096, seed: int = 1, name: str = DEFAULT_NAME) -> list[str]:
    """The statements of the sandbox dump, one per line, as :func:`make_backup` writes them for the
    same ``seed`` when its dump is ``size`` bytes (``max(4096, total_bytes // 5)``): a test can load
    the portal's tables into a database without a restore."""
    text = _sql_dump(random.Random(seed), name, size).decode()
    return [line for line in text.splitlines() if line and not line.startswith("--")]


def _split_sql(dump: bytes, part_bytes: int) -> list[bytes]:
    """Cut a dump into pieces of about ``part_bytes`` at line ends (the vendor's .sql, .sql.1 …)."""
    if part_bytes <= 0:
        return [dump]
    pieces, start = [], 0
    while start < len(dump):
        end = dump.find(b"\n", min(start + part_bytes, len(dump)) - 1)
        end = len(dump) if end < 0 else end + 1
        pieces.append(dump[start:end])
        start = end
    return pieces


# --- the sandbox portal ------------------------------------------------------------------------

CONTENTS = ("portal", "zeros", "sql", "random")


def dump_size(total_bytes: int, content: str = "portal") -> int:
    """Bytes of the dump :func:`make_backup` writes for ``total_bytes`` of ``content``."""
    if content == "sql":
        return max(4096, total_bytes - 8192)
    return max(4096, total_bytes // 5) if content == "portal" else 4096


def _portal(rnd: random.Random, name: str, total: int, sql_part_bytes: int,
            content: str) -> Iterator[tuple[str, bytes, bool]]:
    """(path, content, is_directory) of the portal's files, about ``total`` bytes in all."""
    fill = (lambda n: bytes(n)) if content == "zeros" else rnd.randbytes
    yield "bitrix/", b"", True
    yield ("bitrix/.settings.php", b"<?php\nreturn array('connections' => array('value' => array('default' => array("
           b"'host' => 'localhost', 'database' => 'sitemanager', 'login' => '******', 'password' => '******'))));\n",
           False)
    yield "bitrix/php_interface/", b"", True
    yield "bitrix/php_interface/dbconn.php", b"<?php\n$DBHost = 'localhost';\n$DBLogin = '******';\n$DBPassword = '******';\n", False
    sql_size = dump_size(total, content)
    yield "bitrix/backup/", b"", True
    for i, piece in enumerate(_split_sql(_sql_dump(rnd, name, sql_size), sql_part_bytes)):
        yield f"bitrix/backup/{name}.sql" + (f".{i}" if i else ""), piece, False
    yield f"bitrix/backup/{name}_after_connect.sql", b"SET NAMES 'utf8';\nSET collation_connection = 'utf8_unicode_ci';\n", False
    yield "upload/", b"", True
    long_dir = "upload/disk/" + "/".join(f"folder-with-a-long-name-{i}" for i in range(4))
    yield long_dir + "/attachment.bin", fill(3000), False
    left = total - sql_size - 4096
    n = 0
    while left > 0:
        size = min(left, rnd.randrange(64 * 1024, 1024 * 1024))
        yield f"upload/crm/{n // 50:03d}/file{n:05d}.bin", fill(size), False
        left -= size
        n += 1


def _long_names(rnd: random.Random) -> Iterator[tuple[str, bytes, bool]]:
    """Names at and around the vendor's limits: 100 bytes (no L header), 101 (L), a directory whose
    trailing "/" crosses 100, a UTF-8 name whose 100-byte cut splits a character, the 512-byte
    maximum CTar::addFile accepts, and a deep chain of directories."""
    top = "upload/names/"
    yield top + "a" * (100 - len(top)), rnd.randbytes(100), False
    yield top + "b" * (101 - len(top)), rnd.randbytes(101), False
    yield top + "e" * (99 - len(top)) + "/", b"", True
    yield top + "f" * (100 - len(top)) + "/", b"", True
    yield top + "файл-" + "я" * 60 + ".txt", "содержимое\n".encode() * 40, False
    middle = "c" * 200 + "/" + "d" * 200 + "/"  # each path component stays under NAME_MAX (255)
    yield top + middle + "g" * (512 - len(top) - len(middle)), rnd.randbytes(512), False
    deep = "upload/deep"
    for level in range(14):
        deep += f"/level-{level:02d}-" + "x" * 20
        yield deep + "/", b"", True
    yield deep + "/leaf.txt", b"at the bottom\n", False


def _hostile(kinds: Iterable[str]) -> Iterator[tuple[str, bytes, str, str]]:
    """(name, content, tar type, link target) of members a safe restore must refuse or contain."""
    for kind in kinds:
        if kind == "symlink":  # a link out of the site, then a file written through it
            yield "upload/hostile/escape", b"", "2", "../../.."
            yield "upload/hostile/etc", b"", "2", "/etc"
            yield "upload/hostile/escape/c2b-through-symlink.txt", b"written through a link\n", "0", ""
        elif kind == "symlink_chain":  # each link looks inside when read as text; together they leave
            yield "d/", b"", "5", ""
            yield "d/s", b"", "2", ".."
            yield "x", b"", "2", "d/s/.."
            yield "x/c2b-through-chain.txt", b"written through a chain of links\n", "0", ""
        elif kind == "hardlink":
            yield "upload/hostile/hard-passwd", b"", "1", "/etc/passwd"
            yield "upload/hostile/hard-up", b"", "1", "../c2b-outside.txt"
        elif kind == "dotdot":
            yield "../c2b-dotdot-escape.txt", b"outside by ..\n", "0", ""
            yield "upload/../../c2b-dotdot-escape-2.txt", b"outside by ..\n", "0", ""
        elif kind == "absolute":
            yield "/tmp/c2b-sandbox-absolute-escape.txt", b"outside by an absolute name\n", "0", ""
        else:
            raise ValueError(f"hostile kind {kind!r}: choose from {', '.join(HOSTILE_KINDS)}")


def make_backup(out_dir: str | Path, *, total_bytes: int = 4 * 2**20, part_size: int = 2**20, seed: int = 1,
                name: str = DEFAULT_NAME, member_step: int | None = 256 * 1024, level: int = 1,
                sql_part_bytes: int = 0, encrypt_password: str | None = None,
                encrypt_cipher: str = "aes-256-ecb", encrypt_version: str = "1.2", content: str = "portal",
                long_names: bool = False, hostile: bool | Iterable[str] = False, extension: str | None = None,
                empty_members: bool = False) -> BackupSet:
    """Write the parts of a deterministic backup of about ``total_bytes`` tar bytes into ``out_dir``.

    The tar ends after its last member, with no end-of-archive zero blocks: the vendor's
    archiver never writes them (dump.php only closes the CTar).

    Args:
        part_size: uncompressed bytes per part (a multiple of 512; the vendor's default is
            1 GiB, 100 MB is common).
        member_step: uncompressed bytes per gzip member (the archiver appends in steps); None:
            one member per part.
        level: gzip level; 1 keeps big bench backups quick to make.
        sql_part_bytes: split the dump into ``NAME.sql``, ``NAME.sql.1`` … of about this size (0: one file).
        encrypt_password: encrypt the tar like the vendor (``tar_sha256`` stays that of the plain tar).
        encrypt_cipher, encrypt_version: see :func:`write_parts`.
        content: "portal" (a fifth SQL text, the rest random uploads), "zeros" (uploads of zero
            bytes), "sql" (nearly all one very compressible dump) or "random" (nearly all random).
        long_names: add names at the 100- and 512-byte limits, UTF-8 names and deep directories.
        hostile: True or some of :data:`HOSTILE_KINDS`: append members no restore may follow
            (links out, link chains, hard links, ``..``, absolute names); listed in ``hostile``.
            GNU tar refuses some of them, so such a backup is not one to judge with ``tar x``.
        extension: the part base's suffix; default ``.tar.gz``, ``.enc.gz`` when encrypted (dump.php).
        empty_members: see :func:`write_parts`.
    """
    if content not in CONTENTS:
        raise ValueError(f"content {content!r}: choose from {', '.join(CONTENTS)}")
    kinds = list(HOSTILE_KINDS if hostile is True else hostile or ())
    rnd = random.Random(seed)
    base = name + (extension or (".enc.gz" if encrypt_password is not None else ".tar.gz"))
    tar_hash = hashlib.sha256()
    made = BackupSet(Path(out_dir), base, [], 0, "")

    def members() -> Iterator[bytes]:
        seen: set[str] = set()
        entries = _portal(rnd, name, total_bytes, sql_part_bytes, content)
        for path, data, is_dir in itertools.chain(entries, _long_names(rnd) if long_names else ()):
            # the archiver walks the tree (CDirScan::Scan): every directory before what it holds
            parts = path.rstrip("/").split("/")
            for depth in range(1, len(parts) + is_dir):
                parent = "/".join(parts[:depth])
                if parent not in seen:
                    seen.add(parent)
                    made.dirs.append(parent)
                    yield tar_member(parent + "/", type="5")
            if not is_dir:
                made.files[path] = hashlib.sha256(data).hexdigest()
                yield from _member_chunks(path, data, type="0", linkname="", mode=None, mtime=MTIME)
        for path, data, type, link in _hostile(kinds):
            made.hostile.append(path)
            yield tar_member(path, data, type=type, linkname=link)

    def hashed(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            tar_hash.update(chunk)
            yield chunk

    made.parts = write_parts(out_dir, base, hashed(members()), part_size=part_size, member_step=member_step,
                             level=level, encrypt_password=encrypt_password, encrypt_cipher=encrypt_cipher,
                             encrypt_version=encrypt_version, empty_members=empty_members,
                             archive_id=hashlib.md5(random.Random(seed + 1).randbytes(16)).hexdigest())
    made.tar_size = sum(p.data_size for p in made.parts)
    made.tar_sha256 = tar_hash.hexdigest()
    return made


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a sandbox backup in the vendor's multi-part format.")
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="8M", help="tar bytes in all (e.g. 8M, 1G)")
    ap.add_argument("--part-size", default="2M", help="tar bytes per part (multiple of 512)")
    ap.add_argument("--member-step", default="256k", help="uncompressed bytes per gzip member")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default=DEFAULT_NAME)
    ap.add_argument("--content", choices=CONTENTS, default="portal")
    ap.add_argument("--long-names", action="store_true")
    ap.add_argument("--encrypt-password", help="encrypt like the vendor (the password is the backup's key)")
    ap.add_argument("--cipher", choices=CIPHERS, default=CIPHERS[0])
    ap.add_argument("--encrypt-version", default="1.2")
    args = ap.parse_args(argv)
    made = make_backup(args.out_dir, total_bytes=_size(args.size), part_size=_size(args.part_size),
                       member_step=_size(args.member_step), seed=args.seed, name=args.name, content=args.content,
                       long_names=args.long_names, encrypt_password=args.encrypt_password,
                       encrypt_cipher=args.cipher, encrypt_version=args.encrypt_version)
    print(json.dumps({"base": made.base, "tar_sha256": made.tar_sha256, "parts": made.manifest()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
