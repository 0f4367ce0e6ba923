"""The sandbox backup is in the vendor's format and deterministic."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile

from connectors.bitrix24.backup_format import check_part_count, check_part_names, parse_header
from sandbox.backup_maker import SANDBOX_REST_APPS, dump_statements, make_backup


def test_vendor_layout(tmp_path):
    made = make_backup(tmp_path, total_bytes=2 * 2**20, part_size=512 * 1024, seed=3)
    assert len(made.parts) >= 4
    assert [p.name for p in made.parts][:2] == [made.base, made.base + ".1"]
    for number, part in enumerate(made.parts):
        raw = part.path.read_bytes()
        assert raw[:4] == b"\x1f\x8b\x08\x04" and raw[16:18] == b"BX"
        assert struct.unpack_from("<I", raw, 18)[0] == part.data_size == len(gzip.decompress(raw))
        if number == 0:
            assert raw[12:14] == b"LN" and struct.unpack_from("<H", raw, 14)[0] == len(made.parts) - 1
        if number < len(made.parts) - 1:
            assert part.data_size == 512 * 1024  # cut exactly at the limit, on a 512-byte block
    header = parse_header(made.parts[0].path.read_bytes()[:22])
    names = [p.name for p in made.parts]
    assert check_part_names(names) == [] and check_part_count(names, header.last_part) == []
    # No part can be untarred alone, but the concatenation is one valid tar.
    whole = b"".join(p.path.read_bytes() for p in made.parts)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(whole))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        dump = f"bitrix/backup/{made.base.removesuffix('.tar.gz')}.sql"
        assert dump in members and b"INSERT INTO `b_crm_lead`" in tar.extractfile(dump).read()
        assert any(len(n) > 100 for n in members)  # a GNU long name
        assert members["bitrix/"].isdir() if "bitrix/" in members else members["bitrix"].isdir()


def test_deterministic(tmp_path):
    a = make_backup(tmp_path / "a", total_bytes=600_000, part_size=256 * 1024, seed=5)
    b = make_backup(tmp_path / "b", total_bytes=600_000, part_size=256 * 1024, seed=5)
    c = make_backup(tmp_path / "c", total_bytes=600_000, part_size=256 * 1024, seed=6)
    assert a.manifest() == b.manifest() and a.tar_sha256 == b.tar_sha256
    assert a.tar_sha256 != c.tar_sha256


def test_dump_has_installed_apps_and_an_empty_search_index(tmp_path):
    made = make_backup(tmp_path, total_bytes=600_000, part_size=256 * 1024, seed=5)
    whole = b"".join(p.path.read_bytes() for p in made.parts)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(whole))) as tar:
        dump = tar.extractfile(f"bitrix/backup/{made.base.removesuffix('.tar.gz')}.sql").read().decode()
    lines = dump.splitlines()
    assert any(line.startswith("CREATE TABLE `b_rest_app`") for line in lines)
    apps = next(line for line in lines if line.startswith("INSERT INTO `b_rest_app`"))
    for code, app_name in SANDBOX_REST_APPS.items():
        assert f"'{code}','Y','Y'" in apps and f"'{app_name}')" in apps
    # the vendor dumps the search index empty: its table is created, never filled
    assert any(line.startswith("CREATE TABLE `b_search_content`") for line in lines)
    assert not any(line.startswith("INSERT INTO `b_search_content`") for line in lines)
    # the statements a test loads without a restore are the dump's own
    assert dump_statements(size=max(4096, 600_000 // 5), seed=5) == [s for s in lines if s and not s.startswith("--")]
