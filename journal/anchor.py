"""The journal's anchor: its run count and head hash, kept away from the journal.

The hash chain (journal/chain.py) shows any entry edited, inserted, reordered or removed in the
middle of a run. It cannot show what leaves no trace inside the journal: the last entries cut
off together with their links, the last run deleted, or everything recomputed with this code.
An anchor taken earlier and kept elsewhere shows all three::

    {"anchor": "cloud2box-journal/1", "at": "…", "reason": "gate 1 of run 3f…", "runs": 2,
     "head": "<sha256 over the runs below>", "chains": [["<run id>", <entries>, "<head hash>"], …]}

The journal only grows, so a later journal must contain every anchored run with at least the
anchored number of links, the link at that position having the anchored hash. The short form
``runs=2 head=<hex>`` (what a customer notice shows) is checked too, assuming only the latest
anchored run grew since.

Anchors leave the journal at every gate and at the end of a run: a Prefect artifact, the final
customer notice, and ``[journal] anchor`` (a file appended to, or an http(s) URL POSTed to).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from .chain import GENESIS, ChainEntry, chained_run_ids, snapshot
from .models import utcnow

FORMAT = "cloud2box-journal/1"
_SHORT = re.compile(r"runs=(\d+)\s+head=([0-9a-f]{64})")


def fold(chains: list[tuple[str, int, str]]) -> str:
    """The journal's head hash: every run's (id, entries, head hash), oldest run first."""
    h = hashlib.sha256(FORMAT.encode("utf-8")).hexdigest()
    for run_id, entries, head in chains:
        h = hashlib.sha256(f"{h}|{run_id}|{entries}|{head}".encode("utf-8")).hexdigest()
    return h


@dataclass
class Anchor:
    runs: int
    head: str
    chains: list[tuple[str, int, str]] | None = None  # None: the short form (count and head only)
    at: str = ""
    reason: str = ""

    @property
    def short(self) -> str:
        """One line a person can keep: ``runs=N head=HEX``."""
        return f"runs={self.runs} head={self.head}"

    def to_json(self) -> str:
        return json.dumps({"anchor": FORMAT, "at": self.at, "reason": self.reason, "runs": self.runs,
                           "head": self.head, "chains": [list(c) for c in self.chains or []]},
                          ensure_ascii=False, separators=(",", ":"))


def _run_chains(session) -> dict[str, list[str]]:
    """Each run's entry hashes in chain order (the same order verify() follows)."""
    chain = ChainEntry.__table__
    out: dict[str, list[str]] = {run_id: [] for run_id in chained_run_ids(session)}
    for run_id, entry in session.execute(select(chain.c.run_id, chain.c.entry_hash)
                                         .order_by(chain.c.run_id, chain.c.seq, chain.c.id)):
        out.setdefault(run_id, []).append(entry)
    return out


def current_anchor(journal, reason: str = "") -> Anchor:
    """The anchor of the journal as it is now (one snapshot)."""
    with snapshot(journal) as s:
        chains = [(run_id, len(hashes), hashes[-1] if hashes else GENESIS)
                  for run_id, hashes in _run_chains(s).items()]
    return Anchor(runs=len(chains), head=fold(chains), chains=chains,
                  at=utcnow().replace(microsecond=0).isoformat(), reason=reason)


# -- reading anchors ------------------------------------------------------------------------------

def parse_anchors(value: str) -> list[Anchor]:
    """Anchors from ``--anchor``: a file (JSON lines as ``[journal] anchor`` appends them, or any text
    holding ``runs=N head=HEX``), or that text itself. ValueError when there is none."""
    text = _read_if_file(value)
    found: list[Anchor] = []
    for line in text.splitlines() or [text]:
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if data.get("anchor") == FORMAT:
                found.append(Anchor(runs=int(data["runs"]), head=str(data["head"]),
                                    chains=[(str(r), int(n), str(h)) for r, n, h in data.get("chains", [])],
                                    at=str(data.get("at", "")), reason=str(data.get("reason", ""))))
                continue
        found += [Anchor(runs=int(m.group(1)), head=m.group(2)) for m in _SHORT.finditer(line)]
    if not found:
        raise ValueError("no anchor found: give the anchor file, its JSON line, or 'runs=N head=HEX'")
    return found


def _read_if_file(value: str) -> str:
    """The file's text when ``value`` names one, else ``value`` itself (anchor text, pasted)."""
    if "\n" in value or "{" in value:
        return value
    try:
        path = Path(value)
        return path.read_text(encoding="utf-8") if path.is_file() else value
    except OSError:  # a name too long, unreadable: then it was meant as text; parse_anchors says if not
        return value


# -- checking -------------------------------------------------------------------------------------

@dataclass
class AnchorCheck:
    anchor: Anchor
    differences: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        label = f"anchor {self.anchor.short}" + (f" of {self.anchor.at}" if self.anchor.at else "") + \
                (f" ({self.anchor.reason})" if self.anchor.reason else "")
        if self.ok:
            return f"{label}: MATCHES — the journal holds everything anchored then, unchanged"
        return "\n".join([f"{label}: DIFFERS"] + [f"  - {d}" for d in self.differences])


def check_anchor(journal, anchor: Anchor) -> AnchorCheck:
    """Is the journal at ``anchor`` a prefix of the journal now? Names each run missing, cut or rewritten."""
    with snapshot(journal) as s:
        now = _run_chains(s)
    check = AnchorCheck(anchor)
    if anchor.chains is None:
        check.differences += _check_short(anchor, now)
        return check
    if fold(anchor.chains) != anchor.head:
        check.differences.append("the anchor itself does not add up (its head is not the hash of its runs): "
                                 "it was edited; use a copy you trust")
    for run_id, entries, head in anchor.chains:
        hashes = now.get(run_id)
        if hashes is None:
            check.differences.append(f"run {run_id} is missing: the anchor recorded it with {entries} entries")
        elif len(hashes) < entries:
            check.differences.append(f"run {run_id}: tail cut — {len(hashes)} entries now, {entries} at the "
                                     f"anchor ({entries - len(hashes)} removed)")
        elif entries and hashes[entries - 1] != head:
            check.differences.append(f"run {run_id}: head differs — entry {entries} is not the one anchored: the "
                                     f"run's chain was rewritten up to there")
    if len(now) < anchor.runs:
        check.differences.append(f"{len(now)} runs now, {anchor.runs} at the anchor")
    return check


def _check_short(anchor: Anchor, now: dict[str, list[str]]) -> list[str]:
    """Only a count and a head: the runs before the last anchored one must be as they are now,
    and the last anchored run at some earlier length (it may have grown since)."""
    if len(now) < anchor.runs:
        return [f"runs missing: {len(now)} runs now, {anchor.runs} at the anchor"]
    chains = [(r, len(h), h[-1] if h else GENESIS) for r, h in list(now.items())[:anchor.runs]]
    if anchor.runs == 0:
        return [] if fold([]) == anchor.head else ["head differs"]
    last_id, last_hashes = list(now.items())[anchor.runs - 1]
    before = chains[:-1]
    candidates = [(last_id, 0, GENESIS)] + [(last_id, n, last_hashes[n - 1]) for n in range(1, len(last_hashes) + 1)]
    if any(fold(before + [c]) == anchor.head for c in candidates):
        return []
    return [(f"head differs: no state of this journal's first {anchor.runs} runs has head {anchor.head} — entries "
             f"were removed, edited or rewritten (or an earlier run was written after the anchor); check the "
             f"anchor's JSON form (file or artifact) to see which run")]


# -- sending --------------------------------------------------------------------------------------

def target_label(target: str) -> str:
    """What may be logged about an anchor target: a file path, or a URL's scheme and host only."""
    parts = urllib.parse.urlsplit(target)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return target


def deliver(anchor: Anchor, target: str, *, timeout_s: float, session=None) -> None:
    """Append ``anchor`` to a file, or POST it (JSON) to an http(s) URL within ``timeout_s``.
    Raises OSError / requests' errors; the caller decides (a run journals and goes on)."""
    if target.startswith(("http://", "https://")):
        import requests

        response = (session or requests).post(target, data=anchor.to_json().encode("utf-8"), timeout=timeout_s,
                                              headers={"Content-Type": "application/json"}, allow_redirects=False)
        response.raise_for_status()
        return
    with open(target, "a", encoding="utf-8") as f:
        f.write(anchor.to_json() + "\n")
        f.flush()


__all__ = ["Anchor", "AnchorCheck", "check_anchor", "current_anchor", "deliver", "fold", "parse_anchors",
           "target_label"]

