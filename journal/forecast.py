"""The cutover forecast from the rehearsal's journal: P50/P90 per step, a timeline, the downtime.

What is read from the rehearsal (the latest ``done`` execution of each step):

- **Automated steps** (action other than ``manual``) with a work amount in their
  :class:`~journal.counters.StepCounters`: ``bytes`` (unit bytes) or else ``records`` (unit
  records). The step's rate is :meth:`~journal.counters.StepCounters.rate` (``bytes_per_s`` /
  ``restore_mb_per_s`` × 10⁶ bytes / ``records_per_s``), else amount ÷ duration. What the rate
  does not explain (duration − amount ÷ rate: connecting, listing parts, checks) is a fixed
  overhead that does not scale.
- **Spread** of the rate, from any of: ``counters.rate_samples`` or ``evidence.rate_samples``
  (numbers in unit/s), ``evidence.parts`` (dicts with ``bytes_per_s`` or ``bytes`` and ``seconds``),
  the step's rows of ``c2b_backup_parts`` (bytes fetched ÷ duration per part), and ``eta`` events
  of the step whose data has ``bytes_per_s``/``rate_bps``, ``records_per_s`` or ``rate`` (the
  download's final event, ``eta_s`` = 0, is its average and is left out).
  With three samples or more, P90/P50 of the duration = median rate ÷ 10th-percentile rate;
  otherwise ``[forecast] p90_factor``.
- **Manual steps** and automated steps without an amount: the rehearsal's actual duration is the
  P50; P90 = P50 × ``manual_p90_factor``. A step the rehearsal did not finish uses its plan.

Scaling to the cutover: every bytes step scales with ``backup_size`` ÷ the rehearsal's backup size
(the first bytes step's amount, normally the download); every records step with ``delta_records``
÷ the rehearsal's records. ``rates`` overrides a step's P50 rate (e.g. a throughput measured now).

During the cutover download, :class:`LiveEta` refreshes the step from the live throughput and
journals each ETA change (events of kind ``forecast-eta``). :meth:`Forecast.record` stores the
forecast in the cutover's journal (event ``forecast``) so the report can show forecast vs actual
(:func:`compare`).
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import asdict, dataclass, field
from zoneinfo import ZoneInfo

from .configuration import ForecastSection
from .counters import StepCounters, Unit
from .events import EventKind
from .export import markdown_table
from .models import StepExecution, utcnow

_TABLE_COLUMNS = ["step", "title", "owner", "kind", "P50", "P90", "start (P50)", "end (P50)", "end (P90)", "basis"]


@dataclass
class StepForecast:
    step_id: str
    title: str
    phase: int
    owner: str
    action: str
    kind: str  # automated|manual|plan
    p50_s: float
    p90_s: float
    unit: str | None = None  # bytes|records
    amount: float | None = None  # work of the cutover
    rehearsal_amount: float | None = None
    rehearsal_s: float | None = None
    rate_p50: float | None = None  # unit/s
    spread: float = 1.0  # P90/P50 of the variable part
    overhead_s: float = 0.0
    samples: int = 0
    basis: str = ""
    downtime: str | None = None
    start_p50: dt.datetime | None = None
    end_p50: dt.datetime | None = None
    end_p90: dt.datetime | None = None


@dataclass
class Forecast:
    rehearsal_run_id: str
    rows: list[StepForecast]
    start: dt.datetime
    timezone: str = "UTC"
    backup_size: float | None = None
    delta_records: float | None = None
    created_at: dt.datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        self.retime()

    # -- timeline ---------------------------------------------------------------------------
    def retime(self, start: dt.datetime | None = None) -> None:
        """Lay the steps end to end from ``start``: P50 times and pessimistic (all-P90) ends."""
        self.start = start or self.start
        t50 = t90 = self.start
        for r in self.rows:
            r.start_p50 = t50
            t50 += dt.timedelta(seconds=r.p50_s)
            t90 += dt.timedelta(seconds=r.p90_s)
            r.end_p50, r.end_p90 = t50, t90

    def row(self, step_id: str) -> StepForecast:
        for r in self.rows:
            if r.step_id == step_id:
                return r
        raise KeyError(step_id)

    @property
    def end_p50(self) -> dt.datetime:
        return self.rows[-1].end_p50 if self.rows else self.start

    @property
    def end_p90(self) -> dt.datetime:
        return self.rows[-1].end_p90 if self.rows else self.start

    def downtime(self) -> dict | None:
        """The user downtime window (end of the 'start' step → end of the 'end' step), P50 and P90."""
        start = next((r for r in self.rows if r.downtime == "start"), None)
        end = next((r for r in self.rows if r.downtime == "end"), None)
        if not start or not end:
            return None
        inside = self.rows[self.rows.index(start) + 1: self.rows.index(end) + 1]
        p50 = sum(r.p50_s for r in inside)
        p90 = sum(r.p90_s for r in inside)
        return {"start": start.end_p50, "end_p50": start.end_p50 + dt.timedelta(seconds=p50),
                "end_p90": start.end_p50 + dt.timedelta(seconds=p90), "p50_s": p50, "p90_s": p90,
                "start_step": start.step_id, "end_step": end.step_id}

    # -- output -----------------------------------------------------------------------------
    def to_markdown(self) -> str:
        tz = ZoneInfo(self.timezone)

        def t(x: dt.datetime | None) -> str:
            return f"{x:%Y-%m-%d %H:%M} UTC ({x.astimezone(tz):%H:%M} {self.timezone})" if x else ""

        out = [f"# Cutover forecast from rehearsal run `{self.rehearsal_run_id}`", "",
               f"- Start: {t(self.start)}",
               f"- End: P50 {t(self.end_p50)}; P90 {t(self.end_p90)}"]
        if self.backup_size:
            out.append(f"- Backup size: {human_bytes(self.backup_size)}")
        if self.delta_records is not None:
            out.append(f"- Delta records: {self.delta_records:g}")
        down = self.downtime()
        if down:
            out.append(f"- User downtime ({down['start_step']} → {down['end_step']}): from {t(down['start'])}, "
                       f"P50 {human_duration(down['p50_s'])} (until {t(down['end_p50'])}), "
                       f"P90 {human_duration(down['p90_s'])} (until {t(down['end_p90'])})")
        rows = [{"step": r.step_id, "title": r.title, "owner": r.owner, "kind": r.kind, "P50": human_duration(r.p50_s),
                 "P90": human_duration(r.p90_s), "start (P50)": f"{r.start_p50:%m-%d %H:%M}",
                 "end (P50)": f"{r.end_p50:%m-%d %H:%M}", "end (P90)": f"{r.end_p90:%m-%d %H:%M}", "basis": r.basis}
                for r in self.rows]
        return "\n".join([*out, "", markdown_table(rows, _TABLE_COLUMNS)])

    def to_dict(self) -> dict:
        def ser(v):
            return v.isoformat() if isinstance(v, dt.datetime) else v

        return {"rehearsal_run_id": self.rehearsal_run_id, "start": self.start.isoformat(),
                "timezone": self.timezone, "backup_size": self.backup_size, "delta_records": self.delta_records,
                "created_at": self.created_at.isoformat(),
                "rows": [{k: ser(v) for k, v in asdict(r).items()} for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> "Forecast":
        def de(v, key):
            return dt.datetime.fromisoformat(v) if v and key in ("start_p50", "end_p50", "end_p90") else v

        rows = [StepForecast(**{k: de(v, k) for k, v in r.items()}) for r in data["rows"]]
        return cls(rehearsal_run_id=data["rehearsal_run_id"], rows=rows, start=dt.datetime.fromisoformat(data["start"]),
                   timezone=data.get("timezone", "UTC"), backup_size=data.get("backup_size"),
                   delta_records=data.get("delta_records"),
                   created_at=dt.datetime.fromisoformat(data["created_at"]))

    def record(self, journal, run_id: str, message: str | None = None) -> None:
        """Store this forecast in ``run_id``'s journal (the report compares it with the actuals)."""
        down = self.downtime()
        journal.add_event(run_id, EventKind.FORECAST, message or (
            f"forecast from rehearsal {self.rehearsal_run_id}: end P50 {self.end_p50:%Y-%m-%d %H:%M} UTC, "
            f"P90 {self.end_p90:%Y-%m-%d %H:%M} UTC"
            + (f"; downtime P50 {human_duration(down['p50_s'])}, P90 {human_duration(down['p90_s'])}" if down else "")),
            data=self.to_dict())


def recorded_forecast(journal, run_id: str) -> Forecast | None:
    """The latest forecast stored in ``run_id``'s journal (None if none was recorded)."""
    events = journal.events(run_id, EventKind.FORECAST)
    if not events:
        return None
    return Forecast.from_dict(events[-1].data)


# -- reading the rehearsal ----------------------------------------------------------------------

def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q * 100) - 1))]


def _amount_and_rate(e: StepExecution) -> tuple[Unit | None, float | None, float | None]:
    counters = StepCounters.read(e.counters)
    work = counters.amount()
    if work is None:
        return None, None, None
    unit, amount = work
    rate = counters.rate(unit)
    if not rate and e.duration_s:
        rate = amount / e.duration_s
    return unit, amount, float(rate) if rate else None


def _samples(e: StepExecution, unit: Unit, eta_events: list, part_rows: list) -> list[float]:
    out = [x for x in StepCounters.read(e.counters).rate_samples or [] if x > 0]
    out += [float(x) for x in (e.evidence or {}).get("rate_samples", []) if isinstance(x, (int, float)) and x > 0]
    for part in (e.evidence or {}).get("parts", []) if isinstance((e.evidence or {}).get("parts"), list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("bytes_per_s"):
            out.append(float(part["bytes_per_s"]))
        elif part.get("bytes") and part.get("seconds"):
            out.append(float(part["bytes"]) / float(part["seconds"]))
    keys = ("bytes_per_s", "rate_bps", "rate") if unit == "bytes" else ("records_per_s", "rate")
    for ev in eta_events:
        d = ev.data or {}
        v = next((d[k] for k in keys if d.get(k)), None)
        if isinstance(v, (int, float)) and v > 0 and d.get("eta_s") != 0:  # the final event is the average
            out.append(float(v))
    if unit == "bytes":
        out += [size / secs for size, secs in part_rows if secs and secs > 0 and size]
    return out


def _part_rows(journal, run_id: str) -> dict[str, list[tuple[float, float]]]:
    """Per-part (bytes, seconds) of each step from ``c2b_backup_parts``, when that table exists."""
    from sqlalchemy import inspect as sa_inspect, select

    from .models import Base

    table = Base.metadata.tables.get("c2b_backup_parts")
    if table is None or not sa_inspect(journal.engine).has_table("c2b_backup_parts"):
        return {}
    out: dict[str, list] = {}
    with journal.session() as s:
        for row in s.execute(select(table.c.step_id, table.c.bytes_fetched, table.c.size, table.c.duration_s)
                             .where(table.c.run_id == run_id)):
            out.setdefault(row.step_id or "", []).append((float(row.bytes_fetched or row.size or 0),
                                                         float(row.duration_s or 0)))
    return out


def forecast_from(journal, rehearsal_run_id: str, backup_size: float | None = None,
                  delta_records: float | None = None, *, start: dt.datetime | None = None,
                  rates: dict[str, float] | None = None, runbook=None,
                  section: ForecastSection | None = None,
                  presync: tuple[float, float] | None = None) -> Forecast:
    """``cloud2box forecast --from RUN``: the cutover forecast from a rehearsal's journal.

    Args:
        backup_size: bytes of the cutover backup (default: same as the rehearsal's).
        delta_records: records to transfer after the cutoff (default: as many as in the rehearsal).
        start: when the cutover starts (default now).
        rates: step id → P50 rate to use instead of the rehearsal's (unit/s of that step).
        runbook: a :class:`checklists.runbook.Runbook`; its steps missing from the rehearsal use their plan.
        presync: ``(interval_s, overlap_s)`` of the cutover's pre-sync: when the rehearsal ran pre-sync
            passes, the CRM delta step (``transfer_crm_delta``) is forecast from them
            (:func:`journal.presync.freeze_forecast`), not scaled from the rehearsal's whole delta.
    """
    from .presync import freeze_forecast  # it reads the journal's pre-sync passes, built on this module

    freeze = freeze_forecast(journal, rehearsal_run_id, interval_s=presync[0], overlap_s=presync[1],
                             p90_factor=(section or ForecastSection()).p90_factor) if presync else None
    section = section or ForecastSection()
    run = journal.get_run(rehearsal_run_id)
    latest: dict[str, StepExecution] = {}
    for e in journal.steps(rehearsal_run_id):
        if e.outcome == "done":
            latest[e.step_id] = e
    etas: dict[str, list] = {}
    for ev in journal.events(rehearsal_run_id, EventKind.ETA):
        etas.setdefault(ev.step_id or "", []).append(ev)

    parts = _part_rows(journal, rehearsal_run_id)
    measured = {sid: _amount_and_rate(e) for sid, e in latest.items()}
    base_bytes = next((a for sid, (u, a, _) in sorted(measured.items(), key=lambda kv: latest[kv[0]].seq)
                       if u == "bytes"), None)
    base_records = sum(a for u, a, _ in measured.values() if u == "records") or None
    scale = {"bytes": (backup_size / base_bytes) if backup_size and base_bytes else 1.0,
             "records": (delta_records / base_records) if delta_records is not None and base_records else 1.0}

    rows: list[StepForecast] = []
    for sid, e in sorted(latest.items(), key=lambda kv: kv[1].seq):
        unit, amount, rate = measured[sid]
        common = dict(step_id=sid, title=e.title, phase=e.phase, owner=e.owner, action=e.action,
                      downtime=e.downtime, rehearsal_s=e.duration_s)
        if freeze is not None and e.action == "transfer_crm_delta":
            rows.append(StepForecast(**common, kind="automated", unit="records", amount=freeze.records_p50,
                                     p50_s=freeze.p50_s, p90_s=freeze.p90_s, basis=freeze.basis))
        elif e.action != "manual" and unit and rate:
            samples = _samples(e, unit, etas.get(sid, []), parts.get(sid, []))
            if len(samples) >= 3:
                spread = max(1.0, statistics.median(samples) / _quantile(samples, 0.10))
            else:
                spread = section.p90_factor
            overhead = max(0.0, (e.duration_s or 0.0) - amount / rate)
            rate_p50 = float((rates or {}).get(sid, rate))
            new_amount = amount * scale[unit]
            variable = new_amount / rate_p50
            basis = (f"{human_amount(new_amount, unit)} at {human_rate(rate_p50, unit)}"
                     + (" (live)" if sid in (rates or {}) else "")
                     + (f", spread from {len(samples)} samples" if len(samples) >= 3 else ", default spread")
                     + (f", +{overhead:.0f} s fixed" if overhead >= 1 else ""))
            rows.append(StepForecast(**common, kind="automated", unit=unit, amount=new_amount,
                                     rehearsal_amount=amount, rate_p50=rate_p50, spread=spread, overhead_s=overhead,
                                     samples=len(samples), p50_s=overhead + variable,
                                     p90_s=overhead + variable * spread, basis=basis))
        else:
            d = float(e.duration_s or e.planned_duration_s)
            rows.append(StepForecast(**common, kind="manual", p50_s=d, p90_s=d * section.manual_p90_factor,
                                     basis="rehearsal's actual duration"))
    if runbook is not None:
        order = {s.id: i for i, s in enumerate(runbook.steps)}
        for s in runbook.steps:
            if s.id not in latest:
                rows.append(StepForecast(step_id=s.id, title=s.title, phase=s.phase, owner=s.owner, action=s.action,
                                         kind="plan", p50_s=s.planned_s, p90_s=s.planned_s * section.manual_p90_factor,
                                         downtime=s.downtime, basis="not done in the rehearsal: the plan"))
        rows.sort(key=lambda r: order.get(r.step_id, len(order)))
    return Forecast(rehearsal_run_id=rehearsal_run_id, rows=rows, start=start or utcnow(), timezone=run.timezone,
                    backup_size=backup_size, delta_records=delta_records)


# -- live refresh -------------------------------------------------------------------------------

class LiveEta:
    """Refreshes one running step's forecast from live throughput; journals each real ETA change.

    Call :meth:`update` from the step's progress callback (any frequency). An ETA change is
    journaled (event ``forecast-eta``) the first time and then whenever the P50 end moves by at
    least ``eta_change_min_s`` and ``eta_change_pct`` % of the remaining time.
    """

    def __init__(self, journal, run_id: str, forecast: Forecast, step_id: str,
                 section: ForecastSection | None = None) -> None:
        self.journal, self.run_id, self.forecast, self.step_id = journal, run_id, forecast, step_id
        self.section = section or ForecastSection()
        self.last_eta: dt.datetime | None = None
        self.changes = 0

    def update(self, *, done: float, total: float, rate: float, started_at: dt.datetime,
               now: dt.datetime | None = None) -> dict | None:
        """Refresh from ``done``/``total`` units at ``rate`` units/s; returns the change journaled, or None."""
        now = now or utcnow()
        if rate <= 0:
            return None
        row = self.forecast.row(self.step_id)
        remaining = max(0.0, total - done) / rate
        elapsed = (now - started_at).total_seconds()
        row.p50_s = elapsed + remaining
        row.p90_s = elapsed + remaining * row.spread
        row.rate_p50, row.amount = rate, total
        row.basis = f"live: {human_amount(done, row.unit)} of {human_amount(total, row.unit)} at {human_rate(rate, row.unit)}"
        # Steps before this one are history: the timeline now runs from this step's real start.
        idx = self.forecast.rows.index(row)
        self._retime_from(idx, started_at)
        eta = row.end_p50
        if self.last_eta is not None:
            moved = abs((eta - self.last_eta).total_seconds())
            if moved < self.section.eta_change_min_s or moved < remaining * self.section.eta_change_pct / 100:
                return None
        change = {"step_id": self.step_id, "eta_p50": eta.isoformat(), "eta_p90": row.end_p90.isoformat(),
                  "previous_eta_p50": self.last_eta.isoformat() if self.last_eta else None,
                  "done": done, "total": total, "rate": rate, "unit": row.unit,
                  "p50_s": row.p50_s, "p90_s": row.p90_s}
        down = self.forecast.downtime()
        if down:
            change.update(downtime_end_p50=down["end_p50"].isoformat(), downtime_end_p90=down["end_p90"].isoformat())
        self.journal.add_event(
            self.run_id, EventKind.FORECAST_ETA,
            f"step {self.step_id}: ETA {eta:%H:%M:%S} UTC (P90 {row.end_p90:%H:%M:%S})"
            + (f", was {self.last_eta:%H:%M:%S}" if self.last_eta else "")
            + f" at {human_rate(rate, row.unit)}", data=change, step_id=self.step_id)
        self.last_eta = eta
        self.changes += 1
        return change

    def _retime_from(self, idx: int, started_at: dt.datetime) -> None:
        t50 = t90 = started_at
        for r in self.forecast.rows[idx:]:
            r.start_p50 = t50
            t50 += dt.timedelta(seconds=r.p50_s)
            t90 += dt.timedelta(seconds=r.p90_s)
            r.end_p50, r.end_p90 = t50, t90


# -- forecast vs actual -------------------------------------------------------------------------

FORECAST_METHODS = {"automated": "measured rate", "manual": "rehearsal's duration", "plan": "the plan"}


def compare(forecast: Forecast, journal, run_id: str) -> list[dict]:
    """Per step of ``run_id``: forecast P50/P90 vs the actual duration (latest done execution).

    ``kind`` is what the step is — ``automated`` (an action runs it) or ``manual`` (a person
    confirms it) — read from the step's action; ``method`` is how its forecast was made
    (:data:`FORECAST_METHODS` of the row's kind: an automated step without a measured amount is
    forecast from the rehearsal's duration, like a manual one). ``error_pct`` is
    (P50 − actual) ÷ actual × 100: +162 % means the forecast was 2.62 × the actual duration,
    −40 % that the step took longer than forecast.
    """
    actual = {e.step_id: e for e in journal.steps(run_id) if e.outcome == "done"}
    out = []
    for r in forecast.rows:
        e = actual.get(r.step_id)
        a = e.duration_s if e else None
        out.append({"step": r.step_id, "title": r.title, "kind": "manual" if r.action == "manual" else "automated",
                    "method": FORECAST_METHODS.get(r.kind, r.kind), "basis": r.basis,
                    "p50_s": r.p50_s, "p90_s": r.p90_s,
                    "actual_s": a, "error_pct": (100.0 * (r.p50_s - a) / a) if a else None,
                    "within_p90": (a <= r.p90_s * 1.0000001) if a is not None else None})
    return out


# -- formatting ---------------------------------------------------------------------------------

def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def human_bytes(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"


def human_amount(n: float | None, unit: str | None) -> str:
    return human_bytes(n) if unit == "bytes" else f"{n:.0f} records" if n is not None else ""


def human_rate(rate: float | None, unit: str | None) -> str:
    if rate is None:
        return ""
    return f"{human_bytes(rate)}/s" if unit == "bytes" else f"{rate:.0f} records/s"


__all__ = ["Forecast", "StepForecast", "LiveEta", "forecast_from", "recorded_forecast", "compare",
           "human_duration", "human_bytes"]
