"""The state file: byte ranges on disk, any chunk size on resume, version 1 files still resume."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from connectors import platforms
from connectors.errors import FatalError
from connectors.http_download import UrlListSource, transfer_backup
from connectors.http_download.state import STATE_NAME, PartState, StateFile

from .test_download import assert_same_backup, state_of

FMT = platforms.get("bitrix24").format  # the sandbox makes its backups in this platform's format

KIB64 = 64 * 1024


@st.composite
def part_states(draw):
    chunk = draw(st.integers(1, 8)) * KIB64
    size = draw(st.integers(1, 40 * KIB64))
    part = PartState.new("p.tar.gz", size, chunk)
    part.done = "".join(draw(st.lists(st.sampled_from("01"), min_size=part.chunks, max_size=part.chunks)))
    return part


def covered(part: PartState) -> set[int]:
    """Every 64 KiB-aligned block on disk (chunk sizes are multiples of 64 KiB)."""
    return {b for start, end in part.ranges() for b in range(start // KIB64, -(-end // KIB64))}


@hsettings(max_examples=300, deadline=None)
@given(part_states(), st.integers(1, 8))
def test_rechunk_keeps_exactly_the_whole_chunks_on_disk(old, new_units):
    new = old.rechunk(new_units * KIB64)
    on_disk = covered(old)
    for i, bit in enumerate(new.done):
        start, end = new.chunk_range(i)
        inside = set(range(start // KIB64, end // KIB64 + 1))
        # done exactly when every byte of the new chunk was on disk: nothing guessed, nothing needlessly dropped
        assert (bit == "1") == (inside <= on_disk), (i, old.done, new.done)
    assert covered(new) <= on_disk
    # What is fetched again: at most the two new chunks at the edges of each run of bytes on disk.
    assert old.bytes_done() - new.bytes_done() <= 2 * new.chunk_size * len(old.ranges())
    assert new.rechunk(old.chunk_size).bytes_done() <= old.bytes_done()
    if old.chunk_size % new.chunk_size == 0:  # a finer grid loses nothing
        assert new.bytes_done() == old.bytes_done()


@hsettings(max_examples=100, deadline=None)
@given(part_states())
def test_state_round_trips_as_byte_ranges(tmp_path_factory, part):
    directory = tmp_path_factory.mktemp("state")
    StateFile(directory).put(part)
    raw = json.loads((directory / STATE_NAME).read_text())
    assert raw["version"] == 2
    assert raw["parts"][part.name]["done"] == [list(r) for r in part.ranges()]
    assert StateFile(directory).get(part.name) == part


def test_state_file_is_private_and_a_newer_one_is_not_overwritten(tmp_path):
    StateFile(tmp_path).put(PartState.new("a.tar.gz", 10, KIB64))
    assert (tmp_path / STATE_NAME).stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / (STATE_NAME + ".tmp")).exists()
    (tmp_path / STATE_NAME).write_text(json.dumps({"version": 99, "parts": {}}))
    with pytest.raises(FatalError, match="newer cloud2box") as err:
        StateFile(tmp_path)
    assert STATE_NAME in err.value.fix


def _leftovers(name: str, size: int, chunk_size: int) -> PartState:
    """What a killed run leaves: a run of chunks from the start, then scattered ones."""
    st = PartState.new(name, size, chunk_size)
    st.done = "".join("1" if i < st.chunks // 2 or i % 3 == 0 else "0" for i in range(st.chunks))
    return st


def _half_done(backup, dest, chunk_size: int, version: int) -> int:
    """An earlier run's leftovers of part 1 on disk, in a state file of ``version``; returns
    the bytes it kept."""
    part = backup.parts[1]
    data = part.path.read_bytes()
    st = _leftovers(part.name, part.size, chunk_size)
    partial = bytearray(part.size)
    for start, end in st.ranges():
        partial[start:end] = data[start:end]
    (dest / (part.name + ".c2b-partial")).write_bytes(bytes(partial))
    record = dict(st.to_json(), done=st.done) if version == 1 else st.to_json()
    (dest / STATE_NAME).write_text(json.dumps({"version": version, "parts": {part.name: record}}))
    return st.bytes_done()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("old_kib,new_kib", [(128, 128), (128, 64), (128, 192), (64, 256)])
def test_resume_with_another_chunk_size_keeps_what_is_on_disk(server, backup, settings, tmp_path, version, old_kib,
                                                              new_kib):
    kept = _half_done(backup, tmp_path, old_kib * 1024, version)
    settings = settings.model_copy(update={"chunk_mib": new_kib / 1024})
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert_same_backup(tmp_path, backup)
    part = report.parts[1]
    reused = _leftovers(part.name, part.size, old_kib * 1024).rechunk(new_kib * 1024).bytes_done()
    assert part.resumed_bytes == reused > 0 and (reused == kept or new_kib > old_kib)
    # Only what was not on disk in whole chunks of the new size is fetched.
    assert server.stats.body_bytes == backup.total_size - reused
    assert all(p["verified"] and p["chunk_size"] == new_kib * 1024 for p in state_of(tmp_path).values())


def test_lost_state_file_keeps_complete_parts(server, backup, settings, tmp_path):
    transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    inodes = {p.name: os.stat(tmp_path / p.name).st_ino for p in backup.parts}
    (tmp_path / STATE_NAME).unlink()
    before = server.stats.body_bytes
    report = transfer_backup(UrlListSource(server.part_urls()), tmp_path, settings, fmt=FMT)
    assert server.stats.body_bytes == before  # checked again from disk, nothing fetched
    assert [p.status for p in report.parts] == ["verified"] * len(backup.parts)
    assert {p.name: os.stat(tmp_path / p.name).st_ino for p in backup.parts} == inodes
    assert_same_backup(tmp_path, backup)
