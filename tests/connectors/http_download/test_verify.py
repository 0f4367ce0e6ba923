"""The one-pass verifier: gzip members with CRC32/length, the BX size, manifest hashes, ETags."""

from __future__ import annotations

import struct

import pytest

from connectors.errors import IntegrityError
from connectors.http_download.verify import PartVerifier, etag_md5


def feed(verifier: PartVerifier, data: bytes, step: int = 65_536):
    for i in range(0, len(data), step):
        verifier.update(data[i:i + step])
    return verifier.finish()


def test_good_part_passes_in_any_feed_size(backup):
    part = backup.parts[1]
    data = part.path.read_bytes()
    for step in (1_000, 65_536, len(data)):
        res = feed(PartVerifier(part.name, part.size, sha256=part.sha256, md5=part.md5), data, step)
        assert (res.sha256, res.md5, res.data_size) == (part.sha256, part.md5, part.data_size)
        assert res.members > 2  # the header member plus several data members


def test_first_part_header_tells_the_part_count(backup):
    part = backup.parts[0]
    headers = []
    feed(PartVerifier(part.name, part.size, on_header=headers.append), part.path.read_bytes())
    assert headers[0].last_part == len(backup.parts) - 1
    assert headers[0].size == part.data_size


# Bytes 4-9 of a gzip member header (mtime, XFL, OS) carry no checksum: a flip there is harmless
# and only a manifest can see it; every byte of deflate data or trailer is covered.
@pytest.mark.parametrize("offset", [50, 300_000, -30, -3])
def test_flipped_byte_is_caught(backup, offset):
    part = backup.parts[1]
    data = bytearray(part.path.read_bytes())
    data[offset] ^= 0x01
    with pytest.raises(IntegrityError, match=part.name.replace(".", r"\.")):
        feed(PartVerifier(part.name, part.size), bytes(data))


def test_truncated_part_is_caught(backup):
    part = backup.parts[1]
    data = part.path.read_bytes()[:-5000]
    with pytest.raises(IntegrityError, match="short part"):
        feed(PartVerifier(part.name, part.size), data)
    with pytest.raises(IntegrityError, match="truncated"):
        feed(PartVerifier(part.name, len(data)), data)


def test_bx_size_mismatch_is_caught(backup):
    part = backup.parts[2]
    data = bytearray(part.path.read_bytes())
    data[18:22] = struct.pack("<I", part.data_size - 512)
    with pytest.raises(IntegrityError, match="BX"):
        feed(PartVerifier(part.name, part.size), bytes(data))


def test_not_a_vendor_part(backup):
    with pytest.raises(IntegrityError, match="header"):
        feed(PartVerifier("x.tar.gz", 4096), b"<html>" + b" " * 4090)


def test_hash_checks(backup):
    part = backup.parts[3]
    data = part.path.read_bytes()
    with pytest.raises(IntegrityError, match="md5"):
        feed(PartVerifier(part.name, part.size, md5="0" * 32), data)
    with pytest.raises(IntegrityError, match="ETag"):
        feed(PartVerifier(part.name, part.size, etag_md5="f" * 32), data)
    assert "md5-etag" in feed(PartVerifier(part.name, part.size, etag_md5=part.md5.upper()), data).checks


def test_etag_md5_only_for_single_part_etags():
    assert etag_md5('"0123456789abcdef0123456789ABCDEF"') == "0123456789abcdef0123456789abcdef"
    assert etag_md5('"0123456789abcdef0123456789abcdef-3"') is None  # multipart upload
    assert etag_md5('W/"0123456789abcdef0123456789abcdef"') is None
    assert etag_md5(None) is None
