"""Charts of the report (matplotlib, Agg, no pyplot state): PNG bytes, embedded as base64.

- :func:`gantt_png`: planned vs actual time per step execution.
- :func:`throughput_png`: download (or transfer) throughput over time, from the journal's
  ``eta`` events (data ``bytes_per_s``/``records_per_s``/``rate``) and ``forecast-eta`` events.
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import matplotlib

matplotlib.use("Agg")  # headless: the report is built by flows and CLI without a display

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .events import EventKind  # noqa: E402

OUTCOME_COLOURS = {"done": "#2e7d32", "failed": "#c62828", "running": "#f9a825", "skipped": "#757575"}
PLANNED_COLOUR = "#b0bec5"


def data_uri(png: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _label(e) -> str:
    title = e.title if len(e.title) <= 38 else e.title[:37] + "…"
    return f"{e.step_id} {title}" + (f" (#{e.attempt})" if e.attempt > 1 else "")


def _bars(ax, steps, planned: bool, actual: bool) -> None:
    for y, e in enumerate(steps):
        if planned and e.planned_start and e.planned_end:
            ax.barh(y, date2num(e.planned_end) - date2num(e.planned_start), left=date2num(e.planned_start),
                    height=0.8, color=PLANNED_COLOUR, edgecolor="#78909c", hatch="//", linewidth=0.5)
        if actual and e.actual_start:
            end = e.actual_end or e.actual_start
            width = max(date2num(end) - date2num(e.actual_start), 1e-6)
            ax.barh(y, width, left=date2num(e.actual_start), height=0.45,
                    color=OUTCOME_COLOURS.get(e.outcome, "#455a64"))
    ax.set_yticks(range(len(steps)), [_label(e) for e in steps], fontsize=7)
    ax.invert_yaxis()
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(axis="x", color="#eceff1")


def gantt_png(steps: list) -> bytes | None:
    """Planned (hatched) and actual (coloured by outcome) bars per step execution, times in UTC.

    When the actual run is much shorter than the plan (a rehearsal on the sandbox), a second panel
    shows the actual timeline alone so its bars stay visible.
    """
    if not steps:
        return None
    planned = [t for e in steps for t in (e.planned_start, e.planned_end) if t]
    actual = [t for e in steps for t in (e.actual_start, e.actual_end) if t]
    span = lambda ts: (max(ts) - min(ts)).total_seconds() if ts else 0.0  # noqa: E731
    zoom = bool(planned) and span(actual) < 0.05 * span(planned)
    height = 0.28 * len(steps) + 1.4
    fig = Figure(figsize=(11, height * (2 if zoom else 1)))
    axes = fig.subplots(2, 1) if zoom else [fig.subplots()]
    _bars(axes[0], steps, planned=True, actual=True)
    axes[0].set_title("Planned vs actual per step (UTC)", fontsize=10)
    if zoom:
        _bars(axes[1], steps, planned=False, actual=True)
        axes[1].set_title("Actual timeline, zoomed (UTC)", fontsize=10)
    handles = [Patch(facecolor=PLANNED_COLOUR, edgecolor="#78909c", hatch="//", label="planned")]
    handles += [Patch(color=c, label=f"actual: {o}") for o, c in OUTCOME_COLOURS.items()
                if any(e.outcome == o for e in steps)]
    axes[0].legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def throughput_series(events: list) -> dict[str, list[tuple[dt.datetime, float, str]]]:
    """Throughput samples per step from ``eta``/``forecast-eta`` events: step → [(at, rate, unit)].

    Rates are read from ``bytes_per_s`` or ``rate_bps`` (bytes), ``records_per_s``, or ``rate``.
    """
    series: dict[str, list] = {}
    for ev in events:
        if ev.kind not in (EventKind.ETA, EventKind.FORECAST_ETA):
            continue
        d = ev.data or {}
        if d.get("bytes_per_s") or d.get("rate_bps"):
            rate, unit = float(d.get("bytes_per_s") or d["rate_bps"]), "bytes"
        elif d.get("records_per_s"):
            rate, unit = float(d["records_per_s"]), "records"
        elif d.get("rate"):
            rate, unit = float(d["rate"]), d.get("unit") or "bytes"
        else:
            continue
        series.setdefault(ev.step_id or "?", []).append((ev.at, rate, unit))
    return series


def throughput_png(events: list) -> bytes | None:
    """Throughput over time per step (MB/s for bytes, records/s for records); None without samples."""
    series = throughput_series(events)
    if not series:
        return None
    fig = Figure(figsize=(11, 3.2))
    ax = fig.subplots()
    units = set()
    for step, points in sorted(series.items()):
        points.sort()
        unit = points[0][2]
        units.add(unit)
        scale = 1e6 if unit == "bytes" else 1.0
        ax.plot([p[0] for p in points], [p[1] / scale for p in points], marker=".", linewidth=1.2,
                label=f"step {step}")
    ax.set_ylabel(" / ".join(sorted("MB/s" if u == "bytes" else "records/s" for u in units)))
    ax.set_ylim(bottom=0)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(color="#eceff1")
    ax.legend(fontsize=7)
    ax.set_title("Throughput over time (UTC)", fontsize=10)
    fig.tight_layout()
    return _png(fig)
