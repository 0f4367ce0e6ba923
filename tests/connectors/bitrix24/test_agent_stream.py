"""The restore agent's inflate loop (issue 11, point 1, restore side): it ends, for every member
layout (tiny members, empty ones, one huge member, members ending anywhere inside a read) and any
compressibility, returns exactly the tar bytes, never more than ``OUT_SIZE`` at a time, and holds
a bounded amount of memory; damaged parts are named."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.bitrix24.agent import restore_agent as agent
from sandbox.backup_maker import write_parts

MiB = 2**20


def content(kind: str, size: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    if kind == "zeros":
        return bytes(size)
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "sql":
        rows, n = [], 0
        while sum(map(len, rows)) < size:
            rows.append(f"INSERT INTO `b_crm_lead` VALUES ({n},'Lead {n}','2026-01-01 10:00:00',NULL);\n".encode())
            n += 1
        return b"".join(rows)[:size]
    # mixed: runs of each
    return b"".join(content(k, size // 4, seed + i) for i, k in enumerate(("zeros", "random", "sql", "zeros")))


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["zeros", "random", "sql", "mixed"]),
       size=st.sampled_from([0, 512, 70_000, 300_000, 700_000]),
       part_size=st.sampled_from([512, 4096, 65_536, 1 << 20, 1 << 30]),
       member_step=st.sampled_from([512, 1536, 50_000, 1 << 20, None]),
       empty_members=st.booleans(), level=st.sampled_from([1, 6]),
       read_size=st.sampled_from([17, 4096, 65_536, 1 << 20]),
       out_size=st.sampled_from([511, 4096, 65_536, 1 << 20]),
       seed=st.integers(0, 3))
def test_every_layout_inflates_to_the_tar_in_bounded_pieces(tmp_path_factory, kind, size, part_size, member_step,
                                                            empty_members, level, read_size, out_size, seed):
    tar = pad(content(kind, size, seed))
    out = tmp_path_factory.mktemp("parts")
    cut = random.Random(seed).randrange(1, 9000)  # the writer's input pieces: any length
    parts = write_parts(out, "t.tar.gz", [tar[i:i + cut] for i in range(0, len(tar), cut)], part_size=part_size,
                        member_step=member_step, level=level, empty_members=empty_members)
    with mock.patch.object(agent, "READ_SIZE", read_size), mock.patch.object(agent, "OUT_SIZE", out_size):
        stream = agent.PartStream([str(p.path) for p in parts])
        got = hashlib.sha256()
        total = 0
        for chunk in stream.chunks():
            assert 0 < len(chunk) <= out_size
            got.update(chunk)
            total += len(chunk)
    assert total == len(tar) and got.hexdigest() == hashlib.sha256(tar).hexdigest()
    assert stream.bytes_in == sum(p.size for p in parts) and stream.bytes_out == len(tar)


def zeros(n: int, step: int = 4 * MiB):
    for i in range(0, n, step):
        yield bytes(min(step, n - i))


def test_a_huge_very_compressible_member_uses_little_memory(tmp_path):
    """256 MiB of zeros in one gzip member (about 250 KiB compressed): the loop ends with the
    right byte count, and peak memory stays within a few inflate results."""
    size = 256 * MiB
    parts = write_parts(tmp_path, "z.tar.gz", zeros(size), part_size=size, member_step=None, level=6)
    assert len(parts) == 1 and parts[0].size < MiB
    stream = agent.PartStream([str(parts[0].path)])
    tracemalloc.start()
    try:
        total = biggest = 0
        for chunk in stream.chunks():
            total += len(chunk)
            biggest = max(biggest, len(chunk))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size and biggest <= agent.OUT_SIZE
    assert peak < agent.READ_SIZE + 3 * agent.OUT_SIZE + MiB, f"peak {peak / MiB:.1f} MiB"


def _parts(tmp_path: Path, tar: bytes, **kw):
    return write_parts(tmp_path, "t.tar.gz", [tar], part_size=kw.pop("part_size", 65_536), **kw)


def _drain(parts) -> None:
    for _ in agent.PartStream([str(p.path) for p in parts]).chunks():
        pass


def test_damaged_parts_are_named(tmp_path):
    tar = pad(content("mixed", 300_000, 1))
    parts = _parts(tmp_path, tar, member_step=20_000)
    # truncated inside a member
    last = parts[-1].path
    whole = last.read_bytes()
    last.write_bytes(whole[:-20])
    with pytest.raises(agent.AgentError, match=f"{last.name} is truncated"):
        _drain(parts)
    # a flipped byte inside the data
    raw = bytearray(whole)
    raw[len(raw) // 2] ^= 0x55
    last.write_bytes(bytes(raw))
    with pytest.raises(agent.AgentError, match=f"part {last.name} .*(corrupt|holds)"):
        _drain(parts)
    last.write_bytes(b"")
    with pytest.raises(agent.AgentError, match=f"part {last.name} is truncated: the file is empty"):
        _drain(parts)
    # bytes after the last member
    last.write_bytes(whole + b"\0" * 10)
    with pytest.raises(agent.AgentError, match=f"part {last.name} .*corrupt"):
        _drain(parts)
    # a part that holds fewer tar bytes than its BX header says (a missing member)
    first = parts[0].path
    head = bytearray(first.read_bytes())
    head[18:22] = (int.from_bytes(head[18:22], "little") + 512).to_bytes(4, "little")
    first.write_bytes(bytes(head))
    last.write_bytes(whole)
    with pytest.raises(agent.AgentError, match=f"part {first.name} holds"):
        _drain(parts)


KEY = hashlib.md5(b"stream password").hexdigest().encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cipher_backend=st.sampled_from([("aes-256-ecb", "cryptography"), ("aes-256-ecb", "libcrypto"),
                                       ("aes-256-ecb", "openssl"), ("bf-ecb", "cryptography"),
                                       ("bf-ecb", "libcrypto")]),
       version=st.sampled_from(["1.2", "1.1", "1.0"]), kind=st.sampled_from(["zeros", "random", "sql"]),
       size=st.sampled_from([512, 70_000, 400_000]), part_size=st.sampled_from([1024, 65_536, 1 << 20]),
       member_step=st.sampled_from([512, 1536, 50_000, None]), out_size=st.sampled_from([509, 4100, 1 << 20]))
def test_encrypted_streams_decrypt_whatever_the_chunking(tmp_path_factory, cipher_backend, version, kind, size,
                                                         part_size, member_step, out_size):
    """Inflate results end anywhere, also inside a cipher block: the decrypted stream is the tar."""
    cipher, backend = cipher_backend
    tar = pad(content(kind, size, 5))
    out = tmp_path_factory.mktemp("enc")
    parts = write_parts(out, "t.enc.gz", [tar], part_size=part_size, member_step=member_step,
                        encrypt_password="stream password", encrypt_cipher=cipher, encrypt_version=version)
    with mock.patch.object(agent, "OUT_SIZE", out_size):
        stream, chunks, used = agent.restore_stream([str(p.path) for p in parts], KEY, (backend,))
        got = b"".join(bytes(c) for c in chunks)
    assert (used.cipher, used.name) == (cipher, backend)
    assert got == tar
