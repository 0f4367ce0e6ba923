"""Make a multi-part backup in the vendor's format (see :mod:`connectors.bitrix24.backup_format`).

The content is deterministic for a seed: the same call writes the same bytes, so tests, the demo
and the restore issue can compare against known hashes. The tar holds a small portal: site
settings, uploaded files (random, incompressible), a GNU long-name file and the database dump
``bitrix/backup/NAME.sql`` (optionally split into ``.sql.1`` …) + ``NAME_after_connect.sql``.

The dump carries the Bitrix tables the post-restore step fixes, with the faults of the case: no
portal domain (``b_option`` main/server_name, ``b_lang``), push & pull switched off (``b_option``
pull/nginx, push), empty search tables (``b_search_content``: the vendor dumps it empty), and
Bitrix24.Network users (``b_user.EXTERNAL_AUTH_ID``); and the installed marketplace apps
(``b_rest_app``, :data:`SANDBOX_REST_APPS`) a post-migration check looks for.
With ``encrypt_password`` the tar is encrypted like the vendor's archiver does (Blowfish-ECB,
key md5(password), a signature block first).

Usage: ``python -m sandbox.backup_maker OUT_DIR --size 8M --part-size 2M --seed 1``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from connectors.bitrix24.backup_format import BLOCK, header_member, part_name, tar_end, tar_entry

DEFAULT_NAME = "portal_20261123_000000_full_c2b"


@dataclass(frozen=True)
class MadePart:
    name: str
    path: Path
    size: int  # bytes of the part file
    data_size: int  # uncompressed tar bytes in it (the BX field)
    sha256: str
    md5: str


@dataclass
class BackupSet:
    """What :func:`make_backup` wrote."""

    directory: Path
    base: str  # NAME.tar.gz
    parts: list[MadePart]
    tar_size: int
    tar_sha256: str
    files: dict[str, str] = field(default_factory=dict)  # member path → sha256 of its content

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.parts)

    def manifest(self) -> dict[str, dict]:
        """``{part name: {"size", "sha256", "md5"}}`` — what a plain source's manifest holds."""
        return {p.name: {"size": p.size, "sha256": p.sha256, "md5": p.md5} for p in self.parts}


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


def _entries(rnd: random.Random, name: str, total: int, sql_part_bytes: int = 0) -> Iterator[tuple[str, bytes, bool]]:
    """(path, content, is_directory) of the portal's files, about ``total`` bytes in all."""
    yield "bitrix/", b"", True
    yield ("bitrix/.settings.php", b"<?php\nreturn array('connections' => array('value' => array('default' => array("
           b"'host' => 'localhost', 'database' => 'sitemanager', 'login' => '******', 'password' => '******'))));\n",
           False)
    yield "bitrix/php_interface/", b"", True
    yield "bitrix/php_interface/dbconn.php", b"<?php\n$DBHost = 'localhost';\n$DBLogin = '******';\n$DBPassword = '******';\n", False
    sql_size = max(4096, total // 5)
    yield "bitrix/backup/", b"", True
    for i, piece in enumerate(_split_sql(_sql_dump(rnd, name, sql_size), sql_part_bytes)):
        yield f"bitrix/backup/{name}.sql" + (f".{i}" if i else ""), piece, False
    yield f"bitrix/backup/{name}_after_connect.sql", b"SET NAMES 'utf8';\nSET collation_connection = 'utf8_unicode_ci';\n", False
    yield "upload/", b"", True
    long_dir = "upload/disk/" + "/".join(f"folder-with-a-long-name-{i}" for i in range(4))
    yield long_dir + "/attachment.bin", rnd.randbytes(3000), False
    left = total - sql_size - 4096
    n = 0
    while left > 0:
        size = min(left, rnd.randrange(64 * 1024, 1024 * 1024))
        yield f"upload/crm/{n // 50:03d}/file{n:05d}.bin", rnd.randbytes(size), False
        left -= size
        n += 1


def _gzip_member(data: bytes, level: int) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip wrapper, mtime 0 (deterministic)
    return comp.compress(data) + comp.flush()


ENCRYPTION_SIGNATURE = b"Bitrix Encrypted File"


def _blowfish(password: str):
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish
    except ImportError:  # cryptography < 43 kept it with the other algorithms
        from cryptography.hazmat.primitives.ciphers.algorithms import Blowfish

    return Cipher(Blowfish(hashlib.md5(password.encode()).hexdigest().encode()), modes.ECB())


def encryption_block(password: str, rnd: random.Random) -> bytes:
    """The vendor's first block of an encrypted archive: 256 plain bytes (random id, signature,
    version) followed by the same 256 bytes encrypted — how a reader tells a wrong password."""
    plain = (hashlib.md5(rnd.randbytes(16)).hexdigest().encode().ljust(100, b"\0")
             + ENCRYPTION_SIGNATURE.ljust(90, b"\0") + b"1.0".ljust(10, b"\0") + b"\0" * 56)
    enc = _blowfish(password).encryptor()
    return plain + enc.update(plain) + enc.finalize()


def make_backup(out_dir: str | Path, *, total_bytes: int = 4 * 2**20, part_size: int = 2**20, seed: int = 1,
                name: str = DEFAULT_NAME, member_step: int = 256 * 1024, level: int = 1,
                sql_part_bytes: int = 0, encrypt_password: str | None = None) -> BackupSet:
    """Write the parts of a deterministic backup of about ``total_bytes`` tar bytes into ``out_dir``.

    Args:
        part_size: uncompressed tar bytes per part (a multiple of 512; the vendor's default is
            1 GiB, 100 MB is common).
        member_step: uncompressed bytes per gzip member (the archiver appends in steps).
        level: gzip level; 1 keeps big bench backups quick to make.
        sql_part_bytes: split the dump into ``NAME.sql``, ``NAME.sql.1`` … of about this size (0: one file).
        encrypt_password: encrypt the tar like the vendor (``tar_sha256`` is of the plain tar).
    """
    if part_size % BLOCK:
        raise ValueError("part_size must be a multiple of 512")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    base = f"{name}.tar.gz"
    tar_hash = hashlib.sha256()
    files: dict[str, str] = {}

    def plain_stream() -> Iterator[bytes]:
        for path, data, is_dir in _entries(rnd, name, total_bytes, sql_part_bytes):
            if not is_dir:
                files[path] = hashlib.sha256(data).hexdigest()
            entry = tar_entry(path, data, directory=is_dir, mtime=1_763_856_000)
            tar_hash.update(entry)
            yield entry
        tar_hash.update(tar_end())
        yield tar_end()

    def tar_stream() -> Iterator[bytes]:
        if encrypt_password is None:
            yield from plain_stream()
            return
        cipher = _blowfish(encrypt_password).encryptor()
        first = encryption_block(encrypt_password, random.Random(seed + 1))
        yield first
        for block in plain_stream():
            yield cipher.update(block)

    # Cut the stream into parts of exactly part_size bytes (the last one shorter).
    bodies: list[Path] = []
    sizes: list[int] = []
    buf = bytearray()
    tar_size = 0

    def flush_part(data: bytes) -> None:
        path = out / f".{base}.{len(bodies)}.body"
        with open(path, "wb") as f:
            for i in range(0, len(data), member_step):
                f.write(_gzip_member(data[i:i + member_step], level))
        bodies.append(path)
        sizes.append(len(data))

    for block in tar_stream():
        tar_size += len(block)
        buf += block
        while len(buf) >= part_size:
            flush_part(bytes(buf[:part_size]))
            del buf[:part_size]
    if buf or not bodies:
        flush_part(bytes(buf))

    last = len(bodies) - 1
    parts = []
    for number, (body, size) in enumerate(zip(bodies, sizes)):
        pname = part_name(base, number)
        path = out / pname
        data = header_member(size, last if number == 0 and last > 0 else None) + body.read_bytes()
        path.write_bytes(data)
        body.unlink()
        parts.append(MadePart(pname, path, len(data), size, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()))
    return BackupSet(out, base, parts, tar_size, tar_hash.hexdigest(), files)


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    text = text.strip().lower()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a sandbox backup in the vendor's multi-part format.")
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="8M", help="tar bytes in all (e.g. 8M, 1G)")
    ap.add_argument("--part-size", default="2M", help="tar bytes per part (multiple of 512)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--name", default=DEFAULT_NAME)
    args = ap.parse_args(argv)
    made = make_backup(args.out_dir, total_bytes=_size(args.size), part_size=_size(args.part_size),
                       seed=args.seed, name=args.name)
    print(json.dumps({"base": made.base, "tar_sha256": made.tar_sha256, "parts": made.manifest()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
