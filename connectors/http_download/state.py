"""The download's state file: what is on disk, so a killed download resumes where it stopped.

Rule: the state only ever describes data that is already on disk. A chunk is written with
``pwrite`` + ``fsync`` first, then marked done; the state file itself is replaced atomically
(write a private temp file, fsync, rename, fsync the directory). After ``kill -9`` the worst case
is a chunk on disk that the state does not know about: it is fetched again (one per connection).
A failed save (disk full) leaves the previous state file in place and removes the temp file.

Format, version 2: ``{"version": 2, "parts": {name: {"size", "chunk_size", "done", "etag",
"verified", "sha256", "md5", "source", "restarts"}}}`` where ``done`` lists the byte ranges
``[start, end)`` on disk. Ranges do not depend on the chunk size, so a resumed download may use
another one (:meth:`PartState.rechunk`), and the file stays small however small the chunks are.
Version 1 (the previous release) kept ``done`` as one character per chunk of ``chunk_size``; it
is read as it was meant and saved as version 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from connectors.errors import FatalError

from .disk import open_private

STATE_NAME = ".c2b-download.json"
VERSION = 2
_RUN = re.compile("1+")


@dataclass
class PartState:
    """Progress of one part. ``done`` has one character per chunk: ``1`` on disk, ``0`` not yet."""

    name: str
    size: int
    chunk_size: int
    done: str
    etag: str = ""
    verified: bool = False
    sha256: str = ""
    md5: str = ""
    source: str = ""  # http | ssh
    restarts: int = 0

    @classmethod
    def new(cls, name: str, size: int, chunk_size: int, restarts: int = 0) -> "PartState":
        return cls(name=name, size=size, chunk_size=chunk_size, done="0" * _chunks(size, chunk_size),
                   restarts=restarts)

    @property
    def chunks(self) -> int:
        return len(self.done)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """First and last byte (inclusive) of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def ranges(self) -> list[tuple[int, int]]:
        """The byte ranges ``[start, end)`` on disk, adjacent chunks merged."""
        c = self.chunk_size
        return [(m.start() * c, min(self.size, m.end() * c)) for m in _RUN.finditer(self.done)]

    def bytes_done(self) -> int:
        return sum(end - start for start, end in self.ranges())

    def rechunk(self, chunk_size: int) -> "PartState":
        """The same part in chunks of ``chunk_size``. A new chunk is done only when every byte of
        it is on disk; one only partly on disk is fetched again (no byte range is ever guessed)."""
        return replace(self, chunk_size=chunk_size, done=_bitmap(self.ranges(), self.size, chunk_size))

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["done"] = [list(r) for r in self.ranges()]
        return data

    @classmethod
    def from_json(cls, data: dict, version: int) -> "PartState":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if version >= 2:
            size, chunk = int(values["size"]), int(values["chunk_size"])
            ranges = [(int(s), int(e)) for s, e in values["done"]]
            values["done"] = _bitmap([(s, e) for s, e in ranges if 0 <= s < e <= size], size, chunk)
        part = cls(**values)
        if part.chunk_size <= 0 or part.chunks != _chunks(part.size, part.chunk_size) or set(part.done) - {"0", "1"}:
            raise ValueError(f"inconsistent state of part {part.name}")
        return part


def _chunks(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def _bitmap(ranges: list[tuple[int, int]], size: int, chunk_size: int) -> str:
    """One character per chunk of ``chunk_size``: ``1`` when ``ranges`` cover the whole chunk."""
    n = _chunks(size, chunk_size)
    bits = bytearray(b"0" * n)
    for start, end in ranges:
        first = -(-start // chunk_size)  # the first chunk that starts inside the range
        stop = n if end >= size else end // chunk_size  # chunks that end inside it
        bits[first:max(first, stop)] = b"1" * max(0, stop - first)
    return bits.decode()


@dataclass
class DownloadState:
    parts: dict[str, PartState] = field(default_factory=dict)


class StateFile:
    """The state of the downloads into one directory; thread-safe, every change saved at once.

    Raises (from the constructor) FatalError when the file was written by a newer release;
    every save raises OSError naming the state file when the disk refuses it.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_NAME
        self._lock = threading.Lock()
        self.state = self._load()

    def _load(self) -> DownloadState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            version = raw["version"]
        except FileNotFoundError:
            return DownloadState()
        except (ValueError, OSError, KeyError, TypeError):
            # Unreadable state (a half-written file cannot happen: it is renamed into place). Starting
            # over is safe: complete parts are checked again from disk, no part is trusted unverified.
            return DownloadState()
        if not isinstance(version, int) or version > VERSION:
            raise FatalError(f"the download state {self.path} was written by a newer cloud2box (version {version})",
                             fix=f"run that newer cloud2box, or delete {self.path} to start over (complete parts are "
                                 "checked again from disk, partial ones fetched again)")
        try:
            return DownloadState(parts={n: PartState.from_json(p, version) for n, p in raw.get("parts", {}).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return DownloadState()

    def get(self, name: str) -> PartState | None:
        with self._lock:
            return self.state.parts.get(name)

    def put(self, part: PartState) -> None:
        with self._lock:
            self.state.parts[part.name] = part
            self._save()

    def mark_done(self, name: str, index: int) -> None:
        """Call only after the chunk's bytes are fsynced."""
        with self._lock:
            part = self.state.parts[name]
            part.done = part.done[:index] + "1" + part.done[index + 1:]
            self._save()

    def update(self, name: str, **changes) -> None:
        with self._lock:
            part = self.state.parts[name]
            for key, value in changes.items():
                setattr(part, key, value)
            self._save()

    def _save(self) -> None:
        text = json.dumps({"version": VERSION, "parts": {n: p.to_json() for n, p in self.state.parts.items()}},
                          separators=(",", ":"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            fsync_dir(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()  # the previous state stays in place; give its space back
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
