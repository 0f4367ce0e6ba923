"""Reading the byte layout of a Bitrix24 backup (the vendor's archiver, CTar): part names, the
header member's BX/LN fields, the part set. The product only reads the format; the sandbox writes it
from the vendor's facts on its own (sandbox/backup_maker.py), so the two can disagree.

A backup is one tar stream cut at 512-byte block boundaries into parts ``NAME.tar.gz``,
``NAME.tar.gz.1`` … (``NAME.enc.gz`` … when encrypted). Each part is its own gzip file: first an *empty* gzip member whose header
carries FLG.FEXTRA and a 10-byte extra field, then the data as one or more gzip members::

    offset  0  1f 8b 08 04          gzip magic, deflate, FLG.FEXTRA
            4  mtime (4) xfl os
           10  XLEN = 10 (uint16 LE)
           12  "LN" + last part number (uint16 LE)   first part of a multi-part backup only
           16  "BX" + uncompressed size of this part's data (uint32 LE)
           22  an empty deflate body (CTar writes a stored empty block, then an empty final one),
               CRC32 = 0, ISIZE = 0
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

BLOCK = 512
HEADER_LEN = 22  # bytes of the header member needed to read BX/LN
# The vendor names a plain archive NAME.tar.gz and an encrypted one NAME.enc.gz (dump.php:
# ".enc" when a dump_encrypt_key is set, which cloud backups always have; restore.php lists
# `\.(tar|enc)(\.gz)?$`). Only gzip parts are delivered by the cloud, so only those are parts here.
_PART_RE = re.compile(r"^(?P<base>.+\.(?:tar|enc)\.gz)(?:\.(?P<n>[1-9]\d*))?$")


@dataclass(frozen=True)
class PartHeader:
    """What a part's header member says."""

    size: int  # BX: uncompressed bytes of this part's data
    last_part: int | None  # LN: number of the last part (first part of a multi-part backup only)


def parse_header(head: bytes) -> PartHeader:
    """Read BX (and LN) from the first :data:`HEADER_LEN` bytes of a part.

    Raises ValueError when the bytes are not a vendor part header.
    """
    if len(head) < HEADER_LEN:
        raise ValueError(f"only {len(head)} bytes; a part starts with a {HEADER_LEN}-byte header")
    if head[:2] != b"\x1f\x8b":
        raise ValueError("not gzip data (no 1f 8b magic)")
    if not head[3] & 0x04 or struct.unpack_from("<H", head, 10)[0] < 10 or head[16:18] != b"BX":
        raise ValueError("gzip header without the vendor's BX size field")
    size = struct.unpack_from("<I", head, 18)[0]
    last = struct.unpack_from("<H", head, 14)[0] if head[12:14] == b"LN" else None
    return PartHeader(size=size, last_part=last)


def part_name(base: str, number: int) -> str:
    """``NAME.tar.gz`` for part 0, ``NAME.tar.gz.N`` after."""
    return base if number == 0 else f"{base}.{number}"


def split_part_name(name: str) -> tuple[str, int] | None:
    """``("NAME.tar.gz", N)`` (or ``NAME.enc.gz``, encrypted) for a part name, None for anything else."""
    m = _PART_RE.match(name)
    if not m:
        return None
    return m.group("base"), int(m.group("n") or 0)


def check_part_names(names: list[str]) -> list[str]:
    """Problems with a part list's names: not parts, several backups, gaps. Empty when fine."""
    problems: list[str] = []
    numbers: dict[str, list[int]] = {}
    for name in names:
        split = split_part_name(name)
        if split is None:
            problems.append(f"{name!r} is not a backup part name (NAME.tar.gz or NAME.enc.gz, then .1, .2 …)")
            continue
        numbers.setdefault(split[0], []).append(split[1])
    if len(numbers) > 1:
        problems.append(f"parts of several backups in one list: {', '.join(sorted(numbers))}")
    for base, nums in numbers.items():
        missing = sorted(set(range(max(nums) + 1)) - set(nums))
        if missing:
            problems.append("missing part(s): " + ", ".join(part_name(base, n) for n in missing))
        dupes = sorted({n for n in nums if nums.count(n) > 1})
        if dupes:
            problems.append("listed twice: " + ", ".join(part_name(base, n) for n in dupes))
    return problems


def check_part_count(names: list[str], last_part: int | None) -> list[str]:
    """Compare the part list with the first part's LN marker. Empty when they agree."""
    split = [s for s in map(split_part_name, names) if s]
    if not split:
        return ["no backup parts"]
    base = split[0][0]
    have = {n for _, n in split}
    want = set(range((last_part or 0) + 1))
    problems = []
    if want - have:
        problems.append(f"the first part says there are {len(want)} part(s); missing: "
                        + ", ".join(part_name(base, n) for n in sorted(want - have)))
    if have - want:
        problems.append(f"the first part says there are {len(want)} part(s); extra: "
                        + ", ".join(part_name(base, n) for n in sorted(have - want)))
    return problems


__all__ = [
    "BLOCK", "HEADER_LEN", "PartHeader", "parse_header", "part_name", "split_part_name",
    "check_part_names", "check_part_count",
]


def dump_order(sql_files: list[str]) -> list[str]:
    """The dump files in import order: ``NAME.sql``, ``NAME.sql.1`` … then ``NAME_after_connect.sql``."""
    main, after = [], []
    for f in sql_files:
        if f.endswith("_after_connect.sql"):
            after.append(f)
            continue
        m = re.search(r"\.sql(?:\.(\d+))?$", f)
        if m:
            main.append((int(m.group(1) or 0), f))
    return [f for _, f in sorted(main)] + sorted(after)
