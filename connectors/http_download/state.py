"""The download's state file: what is on disk, so a killed download resumes where it stopped.

Rule: the state only ever describes data that is already on disk. A chunk is written with
``pwrite`` + ``fsync`` first, then marked done; the state file itself is replaced atomically
(write a temp file, fsync, rename, fsync the directory). After ``kill -9`` the worst case is a
chunk on disk that the state does not know about: it is fetched again (one per connection).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_NAME = ".c2b-download.json"
VERSION = 1


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
        n = max(1, -(-size // chunk_size))
        return cls(name=name, size=size, chunk_size=chunk_size, done="0" * n, restarts=restarts)

    @property
    def chunks(self) -> int:
        return len(self.done)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """First and last byte (inclusive) of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(self.size, start + self.chunk_size) - 1

    def bytes_done(self) -> int:
        return sum(self.chunk_range(i)[1] - self.chunk_range(i)[0] + 1 for i, c in enumerate(self.done) if c == "1")


@dataclass
class DownloadState:
    parts: dict[str, PartState] = field(default_factory=dict)


class StateFile:
    """The state of the downloads into one directory; thread-safe, every change saved at once."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STATE_NAME
        self._lock = threading.Lock()
        self.state = self._load()

    def _load(self) -> DownloadState:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return DownloadState()
        except (ValueError, OSError):
            # Unreadable state (a half-written file cannot happen: it is renamed into place).
            # Starting over is safe: no part is trusted without verification anyway.
            return DownloadState()
        if raw.get("version") != VERSION:
            return DownloadState()
        return DownloadState(parts={n: PartState(**p) for n, p in raw.get("parts", {}).items()})

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
        data = {"version": VERSION, "parts": {n: asdict(p) for n, p in self.state.parts.items()}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
