"""What the timeline import (activities, comments, products, product rows) shares: its report,
the owner remapping, the write context and the bounded round loop.

Writes go through the importer's :func:`~connectors.bitrix24.importer._send` and
:func:`~connectors.bitrix24.importer._settle` (one answer lost → wait until the box has ended the
write, keep what it wrote, plan again from the box), so the four entities and the timeline follow
one rule for writes whose outcome is unknown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.errors import TransientError

from .importer import MAX_ROUNDS, MAX_ROUNDS_TOTAL, SETTLE_MAX_S, _Context, _Replan, _unwritten
from .model import ENTITIES

log = logging.getLogger("cloud2box.bitrix24")

OWNER_TYPE_IDS = {"lead": 1, "deal": 2, "contact": 3, "company": 4}  # data-types.md, "Тип объекта CRM"
OWNER_ENTITIES = {v: k for k, v in OWNER_TYPE_IDS.items()}
TIMELINE_ENTITIES = ("product", "productrow", "activity", "comment")


@dataclass
class TimelineEntityImport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    map_rebuilt: int = 0
    duplicates_in_box: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # what points at a record the box does not have
    failures: list[str] = field(default_factory=list)


@dataclass
class TimelineImport:
    entities: dict[str, TimelineEntityImport] = field(default_factory=dict)
    fallback_users: dict[str, int] = field(default_factory=dict)  # cloud user ID → items given to fallback
    seconds: float = 0.0
    requests: int = 0
    rounds: int = 0
    unknown_outcomes: int = 0  # writes whose answer was lost, resolved on the box
    settle_s: float = 0.0

    @property
    def written(self) -> int:
        return sum(e.created + e.updated for e in self.entities.values())

    @property
    def failures(self) -> list[str]:
        return [f for e in self.entities.values() for f in e.failures]

    def summary(self) -> dict:
        out: dict = {e: {"created": r.created, "updated": r.updated, "unchanged": r.unchanged,
                         "map_rebuilt": r.map_rebuilt, "failures": r.failures[:50],
                         "unresolved": r.unresolved[:50], "duplicates_in_box": r.duplicates_in_box[:50]}
                     for e, r in self.entities.items()}
        out["unknown_outcomes"] = self.unknown_outcomes
        out["fallback_users"] = dict(self.fallback_users)
        return out


class Owners:
    """Cloud CRM record → box record: the id map for moved records; a record of the backup keeps
    its ID; one created after the backup (above ``max_ids``) but not moved resolves to None."""

    def __init__(self, idmap, max_ids: dict[str, int] | None) -> None:
        self.maps = {e: idmap.get(e) for e in ENTITIES}
        self.max_ids = dict(max_ids or {})

    def box_id(self, entity: str, cloud_id) -> str | None:
        v = str(cloud_id or "")
        if entity not in self.maps or not v or v == "0":
            return None
        if v in self.maps[entity]:
            return self.maps[entity][v]
        limit = self.max_ids.get(entity)
        return None if limit is not None and int(v) > limit else v


def make_context(box, idmap, report: TimelineImport, *, user_map: dict[str, str], fallback_user_id: int,
                 settle_quiet_s: float | None, settle_max_s: float | None,
                 sleep: Callable[[float], None]) -> _Context:
    quiet = settle_quiet_s if settle_quiet_s is not None else max(1.0, box.timeout)
    longest = settle_max_s if settle_max_s is not None else max(SETTLE_MAX_S, 10 * box.timeout)
    return _Context(box, idmap, None, user_map, fallback_user_id, report, quiet_s=quiet, settle_max_s=longest,
                    sleep=sleep)


def run_rounds(ctx: _Context, entity: str, step: Callable[[], tuple[str, ...]]) -> None:
    """Plan from the box and write, until a plan comes out empty (the box holds everything).

    ``step()`` plans, writes, and returns what it planned (keys such as ``"create:12"``); a write
    whose outcome was unknown raises :class:`_Replan` after it was resolved on the box. The same
    non-empty plan ``MAX_ROUNDS`` times in a row means the box does not keep what we write: those
    items become failures (reported), not an endless loop.

    Raises:
        TransientError: writes kept ending without a sure outcome (the next run continues).
    """
    rep = ctx.report.entities[entity]
    last: tuple[str, ...] | None = None
    same = 0
    unchanged: int | None = None  # what the first plan found already on the box (later rounds find it all)
    for _ in range(MAX_ROUNDS_TOTAL):
        ctx.report.rounds += 1
        try:
            planned = step()
        except _Replan as exc:
            log.warning("%s: %s; planning again from the box", entity, exc)
            continue
        finally:
            unchanged = rep.unchanged if unchanged is None else unchanged
        if not planned:
            rep.unchanged = unchanged
            return
        same = same + 1 if planned == last else 0
        last = planned
        if same >= MAX_ROUNDS - 1:
            rep.unchanged = unchanged or 0
            rep.failures.extend(f"{entity} {p}: written {MAX_ROUNDS} times, the box does not keep it" for p in planned)
            ctx.failed.setdefault(entity, set()).update(p.partition(":")[2] for p in planned)
            return
    raise TransientError(f"box: {entity} writes kept ending without a sure outcome ({MAX_ROUNDS_TOTAL} rounds)",
                         fix="check the box's health")


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0


def created_by(ctx: _Context, entity: str, cmd: dict, res: dict, keyed: list[tuple[str, str]]) -> tuple[list, list]:
    """Sort the answers of one batch of creations: ``keyed`` is (command key, cloud ID). Returns
    ``(ok, unsure)``: (cloud ID, new box ID) of what was written, and the cloud IDs whose outcome is
    unknown (settle them on the box). A refusal the portal explained is reported and not planned
    again; one by a limit, or a command that did not run, is simply planned again next round."""
    rep = ctx.report.entities[entity]
    ok, unsure = [], []
    for key, cid in keyed:
        if key in res["result"]:
            ok.append((cid, str(res["result"][key])))
            continue
        why = _unwritten(ctx, cmd, res, key)
        if why is None:
            rep.failures.append(f"{entity} {cid}: create failed: {res['result_error'].get(key)}")
            ctx.failed.setdefault(entity, set()).add(cid)
        elif why == "unknown":
            unsure.append(cid)
    ctx.idmap.repoint(entity, ok)  # also over a twin the box lost
    rep.created += len(ok)
    return ok, unsure
