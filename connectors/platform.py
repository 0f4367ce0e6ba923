"""What a CRM platform provides, as small Protocols: generic code talks to a platform only through these.

A platform is one package ``connectors/<name>/`` whose ``platform`` module defines ``PLATFORM``
(a :class:`Platform`) and one line in :mod:`connectors.platforms`. Its families, one Protocol each
(optional features are ``None``, like rclone's ``features.go``)::

    Platform
    ├── format       BackupFormat    the backup parts: header, names, count
    ├── delivery     BackupDelivery  where its own backup parts come from ([backup] source)
    ├── restore      RestoreSpec     restoring that backup on the box host
    ├── crm          CrmEndpoint     export / import / reconcile / sweep of the CRM records
    ├── events       CrmEvents|None  pushed change events that wake a sweep early
    ├── checks       PlatformChecks|None  the platform's own verification check kinds
    ├── access       AccessChecks|None    read-only proof of its credentials (``cloud2box check``)
    ├── error_codes  ErrorCodes      its application error codes, for the one HTTP classifier
    └── redaction    patterns        where its credentials sit inside URLs (masked by connectors.secrets)

No Prefect here; the sweep types live here because the flows and the journal build them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

__all__ = ["AccessChecks", "BackupDelivery", "BackupFormat", "CheckNotRun", "CrmEndpoint", "CrmEvents", "ErrorCodes",
           "PartHeaderInfo", "Platform", "PlatformChecks", "RestoreSpec", "SecretLookup", "SweepHistory",
           "SweepOutcome", "SweepPolicy"]

#: ``lookup(secret_name, problems, what)`` → the resolved value, or None after appending a problem
#: (the flows' ``ActionContext.secret_value``).
SecretLookup = Callable[[str | None, list[str], str], Any]
ErrorKind = Literal["rate", "auth", "transient", "not-found"]


class PartHeaderInfo(Protocol):
    """What a part's header tells: the archive's size and, in the first part, the last part's number."""

    size: int
    last_part: int | None


@runtime_checkable
class BackupFormat(Protocol):
    """The layout of the platform's backup parts; download, verify and restore read it."""

    header_len: int  # bytes at the start of a part needed to parse its header
    header_members: int  # archive members that make up the header
    size_field: str  # what the format calls the header's size field, for messages
    count_field: str  # … and the first part's part-count field

    def parse_header(self, head: bytes) -> PartHeaderInfo: ...
    def part_number(self, name: str) -> int | None: ...
    def check_part_names(self, names: list[str]) -> list[str]: ...
    def check_part_count(self, names: list[str], last_part: int | None) -> list[str]: ...


@runtime_checkable
class BackupDelivery(Protocol):
    """The platform's own delivery of backup parts (a ``connectors.http_download`` ``BackupSource``).

    ``section`` is its ``[backup]`` model, tagged by ``source: Literal[name]`` (the other member of
    the config's union is the generic ``source = "urls"``)."""

    section: type[BaseModel]

    def source(self, section: Any, secret: SecretLookup, problems: list[str]) -> Any:
        """The source; missing secrets are appended to ``problems`` (then the result must not be used)."""


@runtime_checkable
class RestoreSpec(Protocol):
    """Restoring the platform's backup on the box host."""

    agent_source: Path  # the stdlib-only agent uploaded to the host
    box_defaults: dict[str, Any]  # [box_host] layout: site_root, staging_dir, db.user, db.database
    # post_restore_section: the [post_restore] model, tagged by a ``platform`` field like CrmEndpoint.section
    dump_hint: str  # where the dump sits in the archive, for messages
    post_restore_section: type[BaseModel]

    def dump_order(self, files: list[str]) -> list[str]: ...
    def post_restore(self, sql: Callable, settings: Any, *, domain: str) -> list[Any]: ...


@runtime_checkable
class CrmEndpoint(Protocol):
    """The CRM records, at the level the flows call: two clients (cloud, box) and what runs on them.

    ``section`` is the ``[crm_delta]`` model; its ``platform`` field (``Literal[name]``, defaulting to
    the name) tags it in the config's union. The clients ``endpoints`` returns are the platform's own;
    the flows use only their ``requests`` count, ``timeout``, ``budget`` slot and ``session.close()``.

    ``backup_marks`` reads the backup's high-water marks from the box: per entity ``{"max_id": the
    backup's highest record ID, "count": the box's records up to it}``. They are right only while
    nothing has been imported (a moved record may look like a backup record afterwards), so the
    flows take them once, journal them, and pass ``max_ids`` to ``export``, the checks and the
    sweeps from the journal; ``skip_ours`` for a box written to before (records carrying the
    migration's own marker are left out). ``reconcile`` takes ``cloud=`` to list the cloud's records
    created since the backup on its own, and ``proven=`` (presence marks an earlier reconciliation
    left, its result's ``proven()``) to list only what came after them. ``import_delta`` takes ``review_dir=`` for the lists the
    customer reviews; its report has ``summary()`` (per entity), ``details()`` (what else it moved or
    made, by kind), ``failures``, ``method``, ``written``, ``requests`` and ``fallback_users``;
    ``reconcile``'s result has ``ok``, ``mismatches``, ``without_twin``, ``evidence()`` and
    ``per_entity()`` (the report's table of what moved).
    """

    entities: tuple[str, ...]
    section: type[BaseModel]

    def endpoints(self, section: Any, secrets: dict, migration: Any, *, source: str,
                  budget: Any = None) -> tuple[Any, Any]: ...
    def export(self, cloud: Any, box: Any, cutoff: dt.datetime, **kw: Any) -> Any: ...
    def write_review_files(self, delta: Any, out_dir: Path) -> list[Path]: ...
    def map_users(self, cloud: Any, box: Any) -> dict[str, str]: ...
    def import_delta(self, box: Any, delta: Any, idmap: Any, **kw: Any) -> Any: ...
    def reconcile(self, box: Any, delta: Any, idmap: Any, **kw: Any) -> Any: ...
    def backup_marks(self, box: Any, cutoff: dt.datetime, *, entities: tuple[str, ...] | list[str],
                     skip_ours: bool = False) -> dict[str, dict[str, int]]: ...
    def sweep(self, cloud: Any, box: Any, idmap: Any, history: "SweepHistory", **kw: Any) -> "SweepOutcome": ...
    def presync(self, cloud: Any, box: Any, idmap: Any, history: "SweepHistory", *, scan_deleted: bool,
                **kw: Any) -> "SweepOutcome":
        """A pre-sync pass: :meth:`sweep`'s move (same keywords) without the stragglers, the moved records
        reconciled and the presence of what the cloud created since the ``proven`` marks (keyword) proven;
        ``scan_deleted``: also compare the whole portal's IDs for records deleted in the cloud."""
    def backlog(self, cloud: Any, since: dt.datetime, *, entities: tuple[str, ...] | list[str]) -> dict[str, int]:
        """Per entity, how many cloud records changed or were created after ``since`` (a few requests)."""


@runtime_checkable
class CrmEvents(Protocol):
    """Optional: the cloud pushes change events; ``on_event(event, record_id)`` wakes a sweep."""

    def receiver(self, token: str, on_event: Callable[[str, str | None], None], *, host: str, port: int) -> Any: ...


class CheckNotRun(Exception):
    """A check kind cannot run with what it was given (the message says what is missing): the
    check is reported "not run", never passed."""


@runtime_checkable
class PlatformChecks(Protocol):
    """The platform's verification check kinds and the options they read from the config.

    A kind is ``kind(access, **params) -> (ok, summary, evidence, items)``, run by
    checklists/verify.py: ``access`` is a ``checklists.verify.VerifyAccess`` whose ``cloud``/``box``
    are this platform's clients (:meth:`CrmEndpoint.endpoints`) and whose ``options`` are what
    :meth:`access_options` returned; ``params`` come from the check's TOML. It raises
    :class:`CheckNotRun` when it cannot run.
    """

    def kinds(self) -> dict[str, Callable]:
        """Check kind (verify.toml ``kind``) → the function that runs it; a fresh dict."""

    def access_options(self, config: Any) -> dict[str, Any]:
        """The platform's own settings its kinds read, from ``config`` (its defaults without one)."""


@runtime_checkable
class AccessChecks(Protocol):
    """Optional: prove, without changing anything, that the run's credentials on this platform work
    (``cloud2box check``, and a run at its start and before the users' downtime). Each method returns
    :class:`connectors.access.AccessResult` rows; every remote call is bounded by ``timeout_s``."""

    def webhooks(self, section: Any, secrets: dict, migration: Any, *, source: str,
                 timeout_s: float) -> list[Any]:
        """The cloud's and the box's CRM access with the rights the run needs (``section``: ``[crm_delta]``)."""

    def delivery(self, section: Any, secret: SecretLookup, *, timeout_s: float) -> list[Any]:
        """The platform's own backup delivery (``section``: its ``[backup]`` model): the parts are listed."""


@runtime_checkable
class ErrorCodes(Protocol):
    """The hook of :func:`connectors.http_errors.classify`: what an application error code means."""

    def kind_of(self, code: str) -> ErrorKind | None: ...


@dataclass(frozen=True)
class Platform:
    """One CRM platform: its name (the ``[migration] platform`` value) and what it provides."""

    name: str
    format: BackupFormat
    delivery: BackupDelivery
    restore: RestoreSpec
    crm: CrmEndpoint
    error_codes: ErrorCodes
    events: CrmEvents | None = None
    checks: PlatformChecks | None = None
    access: AccessChecks | None = None
    redaction: tuple[re.Pattern, ...] = ()  # each: group 1 is kept, group 2 (the credential) is masked


# --- sweeps: built by the flows and the journal, run by the platform --------------------------

class SweepHistory(Protocol):
    """What earlier sweeps saw: the modification times observed per record, and the quarantine."""

    def observed(self, since: dt.datetime) -> dict[tuple[str, str], set[str]]:
        """(entity, cloud ID) → the distinct modification times seen at or after ``since``."""

    def quarantined(self) -> dict[str, set[str]]:
        """entity → cloud IDs in quarantine (not synced until released)."""

    def released_since_last_sweep(self) -> dict[str, set[str]]:
        """entity → cloud IDs released from quarantine since the last sweep: fetched explicitly (their
        last change may be older than the sweep window)."""


@dataclass
class SweepPolicy:
    quarantine_changes: int = 4  # K: changed in more sweeps than this within the window → quarantine
    quarantine_window_s: float = 7200.0  # M
    overlap_s: float = 120.0  # re-list this much before the last sweep: clocks and commits lag
    fallback_user_id: int = 1
    use_batch_import: bool = True


@dataclass
class SweepOutcome:
    started_at: dt.datetime
    since: dt.datetime
    seconds: float = 0.0
    requests: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    echoes_skipped: int = 0
    observed: dict[str, dict[str, str]] = field(default_factory=dict)  # entity → cloud ID → modification time
    newly_quarantined: list[dict] = field(default_factory=list)  # {entity, cloud_id, changes, title}
    held_back: list[dict] = field(default_factory=list)  # already quarantined, changed again, not synced
    stragglers: list[dict] = field(default_factory=list)  # {user_id, name, email, records, last_at}
    high_water: dict[str, int] = field(default_factory=dict)  # entity → highest cloud ID seen
    failures: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the sweep stopped early (budget), None when it finished
    records: int = 0  # records the sweep listed (its delta), timeline and smart processes included
    reconciliation: dict | None = None  # a pre-sync pass proves what it moved: {"ok", "mismatches", "per_entity"}
    deleted_in_cloud: dict[str, list[str]] | None = None  # entity → cloud IDs, when the pass compared ID sets
    proven: dict[str, dict[str, int]] | None = None  # a pre-sync pass's presence marks: entity → {"cloud", "box"}

    @property
    def moved(self) -> int:
        return self.created + self.updated

    def summary(self) -> str:
        text = (f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged on the box; "
                f"{self.echoes_skipped} echo(es) of our writes skipped; {len(self.stragglers)} user(s) still in "
                f"the cloud; {self.requests} request(s)")
        if self.newly_quarantined:
            text += f"; {len(self.newly_quarantined)} record(s) QUARANTINED"
        if self.stopped:
            text += f"; STOPPED: {self.stopped}"
        return text

    def as_data(self) -> dict:
        return {"started_at": self.started_at.isoformat(), "since": self.since.isoformat(),
                "seconds": round(self.seconds, 3), "requests": self.requests,
                "created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "echoes_skipped": self.echoes_skipped, "observed": self.observed,
                "quarantined": self.newly_quarantined, "held_back": self.held_back, "stragglers": self.stragglers,
                "high_water": self.high_water, "failures": self.failures[:50], "stopped": self.stopped,
                "records": self.records, "reconciliation": self.reconciliation,
                "deleted_in_cloud": self.deleted_in_cloud, "proven": self.proven}
