"""Timeline comments made in the cloud after the backup, onto the box.

Facts (bitrix-tools/b24-rest-docs, api-reference/crm/timeline/comments/):
- ``crm.timeline.comment.list`` filters on exactly two fields, both required: ``ENTITY_ID`` and
  ``ENTITY_TYPE`` (lead, deal, contact, company …); order by ``ID``, ``CREATED`` or ``AUTHOR_ID``;
  pages of 50 with ``start`` (crm-timeline-comment-list.md). So comments are listed per owner
  record, 50 owners per batch, and those created after the cutoff are kept. The portal runs a
  batch's commands one after the other (~0.068 s a list page: api-reference/performance/huge-data.md),
  so one batch in flight lists ~15 owners a second while the plan's bucket allows 2 requests of 50:
  :func:`list_comments` keeps up to ``lists.CHAINS`` batches in flight. Their commands count against
  the method's operating time (480 s per 10 min, the docs' limits.md): past ~7 000 owners in a
  window the portal refuses, and the client waits until the window moves on.
- ``crm.timeline.comment.add`` takes ``ENTITY_ID``, ``ENTITY_TYPE``, ``COMMENT`` (and files);
  ``AUTHOR_ID`` is writable once ("Неизменяемое", not read-only, crm-timeline-comment-fields.md);
  ``CREATED`` is read-only: the box dates our copy by the time of the write.
- A comment has no ORIGINATOR_ID/ORIGIN_ID: our copy is recognised by its owner, its text and its
  author, among the box's comments created after the cutoff and not mapped yet (the id map, entity
  "comment", keeps what was found). A box that does not keep the author we send still matches on
  owner and text, so it never gets a copy twice.

Which comments are found: those on every record the delta touched — the four entities' records
created or changed after the cutoff (``owners``) and the records the moved activities are bound to.
A comment added after the cutoff to a backup record that nothing else changed is *not* found
(adding a comment does not change the record, and the list needs its owner), unless the export is
asked to look at every record of the backup too (``all_owners``: one command per record, 50 per
request).
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from connectors.errors import FatalError

from .importer import _Context, _send, _settle
from .lists import CHAINS, iter_rows, php_query
from .model import chunks, parse_date
from .timeline_base import Owners, created_by, run_rounds

log = logging.getLogger("cloud2box.bitrix24")

ENTITY_TYPES = ("lead", "deal", "contact", "company")  # ENTITY_TYPE values of crm-timeline-comment-add.md
PAGE = 50  # the list's fixed page size (crm-timeline-comment-list.md)


def list_comments(client, owners: dict[str, set[str]], *, max_rounds: int = 1_000_000,
                  in_flight: int = CHAINS) -> dict[tuple[str, str], list[dict]]:
    """Every comment of the ``owners`` (entity → record IDs): (entity, ID) → comments by ID, the
    owners in entity then ID order whatever order the batches came back in.

    One command per owner and page, 50 per batch, up to ``in_flight`` batches at once on the
    client (its leaky bucket is shared; each batch's commands refused by a limit are sent again by
    ``batch_each``). A round asks every pending owner for one page; an owner whose page was full
    is read on at ``start`` + 50 in the next round, so ``max_rounds`` bounds the pages per owner."""
    out: dict[tuple[str, str], list[dict]] = {}
    pending = [((e, str(i)), 0) for e in ENTITY_TYPES for i in sorted(owners.get(e, ()), key=int)]
    for _ in range(max_rounds):
        batches = list(chunks(pending, PAGE))
        following = []
        for batch, answers in zip(batches, _run_batches(client, batches, in_flight)):
            for n, (owner, start) in enumerate(batch):
                rows = answers[f"c{n}"]["result"] or []
                out.setdefault(owner, []).extend(rows)
                if len(rows) >= PAGE:
                    following.append((owner, start + PAGE))
        pending = following
        if not pending:
            return out
    raise FatalError(f"{client.name}: comments of {len(pending)} record(s) did not end within {max_rounds} pages",
                     fix="a record with this many timeline comments needs a higher bound")


def _run_batches(client, batches: list[list[tuple[tuple[str, str], int]]], in_flight: int) -> list[dict]:
    """The answers of each batch of (owner, start) pages, in the order of ``batches``; up to
    ``in_flight`` of them sent at once. A batch that fails for good raises; those not started yet
    are not sent."""
    commands = [{f"c{n}": "crm.timeline.comment.list?" + php_query(
        {"filter": {"ENTITY_ID": rid, "ENTITY_TYPE": entity}, "order": {"ID": "ASC"}, "start": start})
        for n, ((entity, rid), start) in enumerate(batch)} for batch in batches]
    if in_flight <= 1 or len(commands) <= 1:
        return [client.batch_each(cmd) for cmd in commands]
    pool = ThreadPoolExecutor(max_workers=min(in_flight, len(commands)), thread_name_prefix="comment-list")
    try:
        return list(pool.map(client.batch_each, commands))  # map keeps the order it was given
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def all_record_ids(client) -> dict[str, set[str]]:
    """Every record ID of the four entities (for ``all_owners``)."""
    return {e: {str(r["ID"]) for r in iter_rows(client, f"crm.{e}.list", select=["ID"])} for e in ENTITY_TYPES}


def since(comments: dict[tuple[str, str], list[dict]], cutoff) -> dict[str, dict]:
    """Cloud comments created after the cutoff: cloud comment ID → row (with its owner)."""
    out = {}
    for (entity, rid), rows in comments.items():
        for r in rows:
            created = parse_date(r.get("CREATED"))
            if created is not None and created > cutoff:
                out[str(r["ID"])] = {**r, "ENTITY_TYPE": entity, "ENTITY_ID": rid}
    return out


def _text(row: dict) -> str:
    return str(row.get("COMMENT") or "").strip()


def match(cloud: dict[str, dict], box_owner_of: dict[str, tuple[str, str] | None], author_of: dict[str, str],
          box_comments: dict[tuple[str, str], list[dict]], mapped: dict[str, str], cutoff) -> dict[str, str]:
    """Pair unmapped cloud comments with unmapped box comments on the same box owner with the same
    text, created after the cutoff; the same author first, then any (see the module doc)."""
    taken = set(mapped.values())
    pairs: dict[str, str] = {}
    for cid in sorted(cloud, key=int):
        owner = box_owner_of.get(cid)
        if cid in mapped or owner is None:
            continue
        candidates = [b for b in box_comments.get(owner, []) if str(b["ID"]) not in taken
                      and _text(b) == _text(cloud[cid]) and (parse_date(b.get("CREATED")) or cutoff) > cutoff]
        best = [b for b in candidates if str(b.get("AUTHOR_ID") or "") == author_of.get(cid)] or candidates
        if best:
            pairs[cid] = str(best[0]["ID"])
            taken.add(pairs[cid])
    return pairs


def import_comments(ctx: _Context, owners: Owners, cloud: dict[str, dict], cutoff) -> None:
    rep = ctx.report.entities["comment"]
    box_owner_of: dict[str, tuple[str, str] | None] = {}
    for cid, row in cloud.items():
        target = owners.box_id(row["ENTITY_TYPE"], row["ENTITY_ID"])
        box_owner_of[cid] = (row["ENTITY_TYPE"], target) if target else None
    rep.unresolved = [f"comment {c}: {cloud[c]['ENTITY_TYPE']} {cloud[c]['ENTITY_ID']} is not on the box"
                      for c, o in box_owner_of.items() if o is None]
    author_of = {c: ctx.box_user(r.get("AUTHOR_ID")) or ctx.fallback for c, r in cloud.items()}
    box_owners: dict[str, set[str]] = {}
    for owner in filter(None, box_owner_of.values()):
        box_owners.setdefault(owner[0], set()).add(owner[1])

    def state() -> tuple[dict, dict[str, str]]:
        on_box = list_comments(ctx.box, box_owners)
        present = {str(b["ID"]) for rows in on_box.values() for b in rows}
        mapped = {c: b for c, b in ctx.idmap.get("comment").items() if c in cloud and b in present}
        return on_box, mapped

    def step() -> tuple[str, ...]:
        on_box, mapped = state()
        found = match(cloud, box_owner_of, author_of, on_box, mapped, cutoff)
        if found:
            rep.map_rebuilt += ctx.idmap.repoint("comment", found.items())  # also over a twin the box lost
            mapped.update(found)
        todo = [c for c in sorted(cloud, key=int) if c not in mapped and box_owner_of[c] is not None
                and c not in ctx.failed.get("comment", ())]
        rep.unchanged = len(mapped)
        _create(ctx, todo, cloud, box_owner_of, author_of, state, on_box)
        return tuple(f"create:{c}" for c in todo)

    run_rounds(ctx, "comment", step)


def _texts(on_box: dict[tuple[str, str], list[dict]]) -> Counter:
    return Counter((owner, _text(b)) for owner, rows in on_box.items() for b in rows)


def _create(ctx: _Context, todo: list[str], cloud: dict[str, dict], box_owner_of, author_of, state,
            on_box: dict[tuple[str, str], list[dict]]) -> None:
    before = _texts(on_box)
    for group in chunks(todo, max(1, min(50, ctx.pace.records(1)))):
        cmd = {f"m{i}": "crm.timeline.comment.add?" + php_query(
            {"fields": {"ENTITY_ID": box_owner_of[c][1], "ENTITY_TYPE": box_owner_of[c][0],
                        "COMMENT": cloud[c].get("COMMENT") or "", "AUTHOR_ID": author_of[c]}})
            for i, c in enumerate(group)}
        # done once the box shows each written text on its owner as often as before plus ours
        wanted = Counter((box_owner_of[c], _text(cloud[c])) for c in group) + before

        def look(wanted=wanted) -> tuple[bool, object]:
            have = _texts(state()[0])
            return all(have[k] >= n for k, n in wanted.items()), tuple(sorted(have.items()))

        res = _send(ctx, "comment", cmd, len(group), f"a write of {len(group)} comments", look, lambda s: None)
        ok, unsure = created_by(ctx, "comment", cmd, res, [(f"m{i}", cid) for i, cid in enumerate(group)])
        before.update((box_owner_of[c], _text(cloud[c])) for c, _ in ok)  # the next group's baseline
        if unsure:
            _settle(ctx, "new comments", look)


def per_owner_texts(rows: dict[str, dict], owner_of) -> dict[tuple[str, str], Counter]:
    """Multiset of comment texts per owner (``owner_of(comment_id, row)`` → owner key or None)."""
    out: dict[tuple[str, str], Counter] = {}
    for cid, row in rows.items():
        owner = owner_of(cid, row)
        if owner is not None:
            out.setdefault(owner, Counter())[_text(row)] += 1
    return out
