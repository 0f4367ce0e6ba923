"""What a step measured: one typed model, written by the actions, read by the forecast and the ladder.

Counters are numbers about a step's work (bytes, records, rates, counts); what the step proved
is its evidence. Every field is optional: each action fills the ones of its kind. A writer that
spells a key nobody reads fails at once (``extra="forbid"``), so renaming a counter cannot
silently degrade the forecast. A reader of an older journal gets what it can use:
:meth:`StepCounters.read` leaves unknown or malformed keys out. A journal row stores
:meth:`StepCounters.as_dict` (the measured fields only).
"""

from __future__ import annotations

from typing import Literal, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

Unit = Literal["bytes", "records"]
MB = 1_000_000


class StepCounters(BaseModel):
    """The counters of one step execution (``StepExecution.counters``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # download_backup; ``bytes`` is also restore_backup's amount
    bytes: int | None = None
    bytes_fetched: int | None = None
    bytes_per_s: float | None = None
    parts: int | None = None
    parts_repaired: int | None = None
    retries: int | None = None
    # box host checks; ``failed`` is also the verification's failed checks
    checks: int | None = None
    failed: int | None = None
    clock_skew_s: float | None = None
    # restore_backup
    bytes_sent: int | None = None
    restore_mb_per_s: float | None = None
    restore_s: float | None = None
    files: int | None = None
    tables: int | None = None
    rows: int | None = None
    import_s: float | None = None
    # post_restore_fixes
    fixed: int | None = None
    password_resets: int | None = None
    # transfer_crm_delta: its counts have always been journaled as floats, so they stay floats
    records: float | None = None
    records_per_s: float | None = None
    import_records_per_s: float | None = None
    created: float | None = None
    updated: float | None = None
    deleted_in_cloud: float | None = None
    requests: float | None = None
    seconds: float | None = None
    # verify
    passed: int | None = None
    not_run: int | None = None
    # the spread of a rate (unit/s), for the forecast's P90
    rate_samples: list[float] | None = None

    @classmethod
    def read(cls, raw: Mapping | None) -> StepCounters:
        """The counters of a journal row; never fails. Keys this model does not know (older
        journals, retired names) and values of the wrong type are left out."""
        known = {k: v for k, v in (raw or {}).items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors()}
            return cls.model_validate({k: v for k, v in known.items() if k not in bad})

    def as_dict(self) -> dict:
        """What the journal stores: the measured fields only."""
        return self.model_dump(exclude_none=True)

    def amount(self) -> tuple[Unit, float] | None:
        """The step's amount of work: ``("bytes", n)``, else ``("records", n)``; None if neither was counted."""
        if (self.bytes or 0) > 0:
            return "bytes", float(self.bytes)
        if (self.records or 0) > 0:
            return "records", float(self.records)
        return None

    def rate(self, unit: Unit) -> float | None:
        """The measured rate in ``unit``/s: ``bytes_per_s`` or ``restore_mb_per_s`` × 10⁶ for bytes,
        ``records_per_s`` for records; None when the step measured none (a zero is not a rate)."""
        if unit == "bytes":
            return self.bytes_per_s or (self.restore_mb_per_s * MB if self.restore_mb_per_s else None)
        return self.records_per_s or None


__all__ = ["StepCounters", "Unit"]
