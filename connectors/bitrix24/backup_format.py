"""The byte layout of a Bitrix24 backup (the vendor's archiver, CTar), shared by the downloader,
the sandbox and the restore.

A backup is one tar stream cut at 512-byte block boundaries into parts ``NAME.tar.gz``,
``NAME.tar.gz.1`` … Each part is its own gzip file: first an *empty* gzip member whose header
carries FLG.FEXTRA and a 10-byte extra field, then the data as one or more gzip members::

    offset  0  1f 8b 08 04          gzip magic, deflate, FLG.FEXTRA
            4  mtime (4) xfl os
           10  XLEN = 10 (uint16 LE)
           12  "LN" + last part number (uint16 LE)   first part of a multi-part backup only
           16  "BX" + uncompressed size of this part's data (uint32 LE)
           22  empty deflate block, CRC32 = 0, ISIZE = 0

Tar headers are old-style (no ustar magic), checksummed; type ``0`` file, ``5`` directory,
``L`` GNU long name (the name follows in the next block).
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

BLOCK = 512
HEADER_LEN = 22  # bytes of the header member needed to read BX/LN
_PART_RE = re.compile(r"^(?P<base>.+\.tar\.gz)(?:\.(?P<n>[1-9]\d*))?$")


@dataclass(frozen=True)
class PartHeader:
    """What a part's header member says."""

    size: int  # BX: uncompressed bytes of this part's data
    last_part: int | None  # LN: number of the last part (first part of a multi-part backup only)


def header_member(size: int, last_part: int | None = None) -> bytes:
    """The empty gzip member that starts every part (``last_part`` only in the first part)."""
    if not 0 <= size < 2**32:
        raise ValueError("a part's uncompressed size must fit in 32 bits")
    ln = b"LN" + struct.pack("<H", last_part) if last_part else b"\0\0\0\0"
    extra = ln + b"BX" + struct.pack("<I", size)
    deflate_empty = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate_empty.compress(b"") + deflate_empty.flush()
    return (b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\0\x03" + struct.pack("<H", len(extra)) + extra
            + body + struct.pack("<II", 0, 0))


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
    """``("NAME.tar.gz", N)`` for a part name, None for anything else."""
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
            problems.append(f"{name!r} is not a backup part name (NAME.tar.gz, NAME.tar.gz.1 …)")
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


# --- tar (old-style headers, as the vendor's archiver writes them) ----------------------------

def _octal(value: int, width: int) -> bytes:
    return (b"%0*o" % (width - 1, value)) + b"\0"


def tar_header(name: str, size: int, *, typeflag: bytes = b"0", mode: int = 0o644, mtime: int = 0) -> bytes:
    """One old-style (pre-POSIX) 512-byte tar header with a valid checksum.

    Names longer than 100 bytes need :func:`tar_entry`, which adds the GNU ``L`` block.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError("name longer than 100 bytes: use tar_entry()")
    head = bytearray(BLOCK)
    head[0:len(raw)] = raw
    head[100:108] = _octal(mode, 8)
    head[108:116] = _octal(0, 8)
    head[116:124] = _octal(0, 8)
    head[124:136] = _octal(size, 12)
    head[136:148] = _octal(mtime, 12)
    head[148:156] = b" " * 8
    head[156:157] = typeflag
    checksum = sum(head)
    head[148:156] = b"%06o\0 " % checksum
    return bytes(head)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def tar_entry(name: str, data: bytes = b"", *, directory: bool = False, mtime: int = 0) -> bytes:
    """Header block(s) plus padded data of one tar member (directory names end in ``/``)."""
    if directory and not name.endswith("/"):
        name += "/"
    out = b""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        long_name = raw + b"\0"
        out += tar_header("././@LongLink", len(long_name), typeflag=b"L") + _padded(long_name)
        name = raw[:100].decode("utf-8", "ignore")
    typeflag = b"5" if directory else b"0"
    out += tar_header(name, 0 if directory else len(data), typeflag=typeflag,
                      mode=0o755 if directory else 0o644, mtime=mtime)
    return out + _padded(data)


def tar_end() -> bytes:
    """The two zero blocks that end a tar stream."""
    return b"\0" * (2 * BLOCK)


__all__ = [
    "BLOCK", "HEADER_LEN", "PartHeader", "header_member", "parse_header", "part_name", "split_part_name",
    "check_part_names", "check_part_count", "tar_header", "tar_entry", "tar_end",
]
