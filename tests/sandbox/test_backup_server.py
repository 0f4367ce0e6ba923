"""The sandbox backup server speaks the vendor's protocol, honours Range and injects faults."""

from __future__ import annotations

import requests

from sandbox.backup_server import SIGNATURE_HEADER, BackupServer, check_word, md5_hex, start_backup_sandbox
from sandbox.backup_maker import make_backup


def test_protocol_range_and_faults(tmp_path):
    made = make_backup(tmp_path, total_bytes=700_000, part_size=256 * 1024)
    with BackupServer(tmp_path, rate=0) as srv:
        info = requests.get(srv.info_url, params={"license": md5_hex(srv.licence_key), "action": "get_info"}, timeout=5)
        assert info.status_code == 200 and made.parts[1].name in info.text
        assert requests.get(srv.info_url, params={"license": "x", "action": "get_info"}, timeout=5).status_code == 403
        loc = requests.get(srv.info_url, params={"license": md5_hex(srv.licence_key), "action": "read_file",
                                                 "file_name": made.parts[0].name,
                                                 "check_word": check_word(srv.password)}, timeout=5)
        assert SIGNATURE_HEADER in loc.text
        storage = f"{srv.url}/storage/{made.parts[0].name}"
        assert requests.get(storage, timeout=5).status_code == 403  # unsigned
        url = srv.part_urls()[0]
        data = made.parts[0].path.read_bytes()
        r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        srv.faults.ignore_range(times=1)
        assert requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5).status_code == 200
        srv.faults.html_error(times=1)
        r = requests.get(url, headers={"Range": "bytes=0-9"}, timeout=5)
        assert r.status_code == 200 and "html" in r.headers["Content-Type"]
        srv.faults.unavailable(times=1, retry_after=7)
        r = requests.get(url, timeout=5)
        assert r.status_code == 503 and r.headers["Retry-After"] == "7"
        srv.faults.corrupt_part(made.parts[0].name)
        assert requests.get(url, timeout=5).content != data
        srv.faults.clear()
        assert requests.get(url, timeout=5).content == data


def test_demo_sandbox_handles(tmp_path):
    with start_backup_sandbox(tmp_path) as box:
        assert 3 <= len(box.backup.parts) <= 4 and box.corrupt_part == box.backup.parts[1].name
        text = "\n".join(box.toml_lines())
        assert "[backup.mirror]" in text and str(box.mirror.known_hosts) in text
        assert box.server.licence_key not in text and box.server.password not in text
        assert set(box.env) == set(box.secrets.values())


def test_parts_are_listed_by_number_and_only_vendor_names_are_served(tmp_path):
    # an encrypted archive is NAME.enc.gz (dump.php); with 11+ parts, .10 sorts after .9
    made = make_backup(tmp_path, total_bytes=400_000, part_size=32 * 1024, encrypt_password="pw")
    assert made.base.endswith(".enc.gz") and len(made.parts) > 10
    (tmp_path / "notes.txt").write_text("not a part")
    (tmp_path / f"{made.base}.01").write_bytes(b"not a part either")
    with BackupServer(tmp_path, rate=0) as srv:
        assert [p.name for p in srv.part_paths()] == [p.name for p in made.parts]
        assert requests.get(f"{srv.url}/parts/notes.txt", timeout=5).status_code == 404
        assert requests.get(f"{srv.url}/parts/{made.base}.01", timeout=5).status_code == 404
        assert requests.get(srv.part_urls()[10], timeout=5).content == made.parts[10].path.read_bytes()
