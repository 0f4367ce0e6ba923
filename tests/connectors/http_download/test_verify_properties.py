"""Property tests of the part verifier over chunk size × content × gzip member layout.

Parts are built here from the format's facts (DESIGN.md, "Backup delivery and format"), with
Python's zlib and gzip, not with the product's writer. GNU gzip is the judge of what a corrupted
byte does: the verifier may pass a corrupted part only when gzip inflates it to exactly the
original bytes (a change in a member's mtime/XFL/OS bytes, the FTEXT flag or a deflate padding
bit) and the BX field is intact.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import struct
import subprocess
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import platforms
from connectors.errors import IntegrityError
from connectors.http_download import verify
from connectors.http_download.verify import MEMORY_BOUND, PartVerifier

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format
MiB = 2**20
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def header_member(bx: int, last_part: int | None = None, zlib_127: bool = True) -> bytes:
    """The vendor's empty first member: FLG.FEXTRA, XLEN 10, [LN n] BX size, then an empty body:
    the archiver's literal (an empty stored block, then an empty final fixed block, as zlib 1.2.7
    wrote it) or just the final fixed block; CRC32 0, ISIZE 0."""
    ln = b"LN" + struct.pack("<H", last_part) if last_part is not None else bytes(4)
    extra = ln + b"BX" + struct.pack("<I", bx)
    body = (b"\x00\x00\x00\xff\xff" if zlib_127 else b"") + b"\x03\x00"
    return (b"\x1f\x8b\x08\x04" + bytes(4) + b"\x00\x03" + struct.pack("<H", len(extra)) + extra
            + body + struct.pack("<II", 0, 0))


def gzip_member(data: bytes, level: int, via_gzip_module: bool, mtime: int) -> bytes:
    if via_gzip_module:  # another writer: mtime set, XFL from the level
        return gzip.compress(data, compresslevel=level, mtime=mtime)
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)
    return comp.compress(data) + comp.flush()


def sql_text(rnd: random.Random, size: int) -> bytes:
    rows, total = [], 0
    while total < size:
        row = (f"({rnd.randrange(10**6)},'lead {rnd.randrange(10**4)}','{rnd.choice(['NEW', 'CONVERTED'])}',"
               f"'2026-11-{rnd.randrange(1, 29):02d}',NULL),").encode()
        rows.append(row)
        total += len(row)
    return b"".join(rows)[:size]


# Content of any compressibility: runs of zeros (a 4 MiB run inflates from ~4 KiB, more than one
# inflate output step), SQL-like text, random bytes.
segment = st.one_of(st.tuples(st.just("zeros"), st.one_of(st.integers(0, 4096), st.integers(MiB, 4 * MiB))),
                    st.tuples(st.just("sql"), st.integers(1, 200_000)),
                    st.tuples(st.just("random"), st.integers(1, 48_000)))


@st.composite
def parts(draw):
    """(part bytes, content, data members, LN) with 1-6 data members cut anywhere in the content."""
    rnd = random.Random(draw(st.integers(0, 2**32)))
    content = b""
    for kind, size in draw(st.lists(segment, min_size=1, max_size=4)):
        content += bytes(size) if kind == "zeros" else sql_text(rnd, size) if kind == "sql" else rnd.randbytes(size)
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=5)))
    pieces = [content[a:b] for a, b in zip([0] + cuts, cuts + [len(content)])]
    members = [gzip_member(p, draw(st.integers(0, 9)), draw(st.booleans()), draw(st.integers(0, 2**32 - 1)))
               for p in pieces]
    last_part = draw(st.one_of(st.none(), st.integers(1, 65535)))
    header = header_member(len(content), last_part, draw(st.booleans()))
    return header + b"".join(members), content, members, last_part


# Feed sizes: the downloader's 64 KiB-16 MiB chunks, odd sizes, single bytes; a schedule of
# several sizes is cycled through (as a resumed download with another chunk size does).
chunk_size = st.one_of(st.sampled_from([1, 2, 7, 64 * 1024, MiB, 8 * MiB, 16 * MiB]), st.integers(1, 100),
                       st.integers(64 * 1024 - 3, 64 * 1024 + 3), st.integers(100, 3 * MiB))
schedules = st.lists(chunk_size, min_size=1, max_size=4)


def feed(verifier: PartVerifier, data: bytes, schedule: list[int]):
    view, offset, turn = memoryview(data), 0, 0
    while offset < len(data):
        step = schedule[turn % len(schedule)]
        if step < 64 and len(data) > 2 * MiB:
            step *= 4096  # single bytes over megabytes would only make the test slow
        verifier.update(view[offset:offset + step])
        offset += step
        turn += 1
    return verifier.finish()


def gzip_judge(data: bytes, content: bytes) -> bool:
    """True when GNU gzip inflates ``data`` to exactly ``content`` and the BX field says its size."""
    proc = subprocess.run(["gzip", "-dc"], input=data, capture_output=True, timeout=60, check=False)
    bx = data[16:18] == b"BX" and struct.unpack_from("<I", data, 18)[0] == len(content)
    return proc.returncode == 0 and proc.stdout == content and bx


@pytest.fixture(params=["default", "stdlib-zlib"])
def inflater(request, monkeypatch):
    """Run with the default inflater (zlib-ng) and with the stdlib fallback."""
    if request.param == "stdlib-zlib":
        monkeypatch.setattr(verify, "_inflater", zlib)
    return request.param


@PROPERTY
@given(part=parts(), schedule=schedules)
def test_good_parts_verify_in_any_chunk_schedule(inflater, part, schedule):
    data, content, members, last_part = part
    seen = []
    res = feed(PartVerifier("p.tar.gz", len(data), fmt=FMT, sha256=hashlib.sha256(data).hexdigest(),
                            on_header=seen.append),
               data, schedule)
    assert res.data_size == len(content) == res.header.size
    assert res.header.last_part == last_part
    assert res.members == len(members) + 1
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.md5 == ""  # nothing asked for md5: it is not computed
    assert res.checks == ("gzip-crc32-length", "bx-size", "sha256-manifest")
    assert seen == [res.header]


@PROPERTY
@given(part=parts(), schedule=schedules, where=st.floats(0, 1, exclude_max=True), mask=st.integers(1, 255))
def test_a_corrupted_byte_is_caught_unless_it_changes_nothing(part, schedule, where, mask):
    data, content, _, _ = part
    pos = int(where * len(data))
    bad = bytearray(data)
    bad[pos] ^= mask
    bad = bytes(bad)
    seen = []
    try:
        res = feed(PartVerifier("p.tar.gz", len(bad), fmt=FMT, on_header=seen.append), bad, schedule)
    except IntegrityError as exc:
        assert "p.tar.gz" in exc.message
        assert seen == []  # a header is never reported from a part that failed
        return
    # It passed: the byte must be one the gzip format does not cover, and nothing inflated changed.
    assert 16 > pos or pos > 21, "a corrupt BX field passed"
    assert gzip_judge(bad, content), f"byte {pos} ^ {mask:#x} changed what gzip inflates, yet it passed"
    assert res.data_size == len(content)
    # With a manifest the same byte is caught.
    with pytest.raises(IntegrityError, match="sha256"):
        feed(PartVerifier("p.tar.gz", len(bad), fmt=FMT, sha256=hashlib.sha256(data).hexdigest()), bad, schedule)


@PROPERTY
@given(part=parts(), where=st.floats(0, 1, exclude_max=True))
def test_covered_bytes_always_fail_and_uncovered_ones_pass(part, where):
    """Exactly which header bytes carry no check: the members' mtime/XFL/OS and the LN field."""
    data, content, members, _ = part
    starts, offset = [], len(data) - sum(map(len, members))
    for m in members:
        starts.append(offset)
        offset += len(m)
    uncovered = {*range(4, 10), *range(12, 16)} | {s + i for s in starts for i in range(4, 10)}
    pos = int(where * len(data))
    bad = bytearray(data)
    bad[pos] ^= 0xFF
    verifier = PartVerifier("p.tar.gz", len(bad), fmt=FMT)
    if pos in uncovered:
        assert feed(verifier, bytes(bad), [64 * 1024]).data_size == len(content)
    elif 16 <= pos < 22 or pos < 4 or pos in {s + i for s in starts for i in range(4)}:
        with pytest.raises(IntegrityError):  # BX, and every member's magic, method and flags
            feed(verifier, bytes(bad), [64 * 1024])


@PROPERTY
@given(part=parts(), where=st.floats(0, 1, exclude_max=True), schedule=schedules)
def test_truncated_or_padded_parts_fail(part, where, schedule):
    data, _, members, _ = part
    cut = data[:int(where * len(data))]
    with pytest.raises(IntegrityError, match="short part"):
        feed(PartVerifier("p", len(data), fmt=FMT), cut, schedule)
    ends, offset = [], len(data) - sum(map(len, members))
    for m in members:
        offset += len(m)
        ends.append((offset, m))
    # Cut after the last member that holds data, only empty members lost: still a whole part.
    whole = any(end == len(cut) for end, _ in ends) and all(
        zlib.decompress(m, 31) == b"" for end, m in ends if end > len(cut))
    if cut and not whole:
        with pytest.raises(IntegrityError):  # told the short length: the gzip stream or BX gives it away
            feed(PartVerifier("p", len(cut), fmt=FMT), cut, schedule)
    padded = data + bytes(int(where * 600) + 1)  # trailing zeros are not a gzip member
    with pytest.raises(IntegrityError):
        feed(PartVerifier("p", len(padded), fmt=FMT), padded, schedule)


@pytest.mark.timeout(120)  # the old verifier spun here forever
@pytest.mark.parametrize("inflater", ["default", "stdlib-zlib"], indirect=True)
def test_256_mib_of_zeros_in_16_mib_chunks_ends_in_bounded_memory(inflater):
    """The case that used to spin: one member that inflates 1000-fold, in the biggest chunks."""
    size = 256 * MiB
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = b"".join(comp.compress(bytes(MiB)) for _ in range(size // MiB)) + comp.flush()
    data = header_member(size + 4) + body + gzip_member(b"tail", 6, False, 0)
    chunks = [data[i:i + 16 * MiB] for i in range(0, len(data), 16 * MiB)]
    verifier = PartVerifier("zeros.tar.gz", len(data), fmt=FMT)
    tracemalloc.start()
    try:
        for chunk in chunks:
            verifier.update(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    res = verifier.finish()
    assert res.data_size == size + 4 and res.members == 3
    assert peak < MEMORY_BOUND, peak


@pytest.mark.timeout(120)
def test_memory_stays_bounded_with_a_member_ending_in_every_inflate_step():
    """Many members of 3 MiB of zeros each, fed 16 MiB at a time: each call ends members inside
    steps that inflated the full output step."""
    one = gzip_member(bytes(3 * MiB), 9, False, 0)
    data = header_member(200 * 3 * MiB) + one * 200
    verifier = PartVerifier("p", len(data), fmt=FMT)
    tracemalloc.start()
    try:
        for i in range(0, len(data), 16 * MiB):
            verifier.update(data[i:i + 16 * MiB])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert verifier.finish().members == 201
    assert peak < MEMORY_BOUND + 16 * MiB, peak  # the slice handed in is the caller's
