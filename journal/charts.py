"""Charts of the report (matplotlib, Agg, no pyplot state): PNG bytes, embedded as base64.

- :func:`gantt_png` (:func:`gantt_figure`): the plan and the actual run per step execution, each
  on its own time axis, with the user downtime shaded and the gates marked.
- :func:`throughput_png`: download (or transfer) throughput over time, from the journal's
  ``eta`` events (data ``bytes_per_s``/``rate_bps``/``rate``) and ``forecast-eta`` events.

Both are sized for the printable width of an A4 portrait page (190 mm): the report prints them at
100 % width, and none is taller than a printed page.
"""

from __future__ import annotations

import base64
import datetime as dt
import io

import matplotlib

matplotlib.use("Agg")  # headless: the report is built by flows and CLI without a display

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from .events import EventKind  # noqa: E402
from .forecast import human_duration  # noqa: E402

OUTCOME_COLOURS = {"done": "#2e7d32", "failed": "#c62828", "running": "#f9a825", "skipped": "#757575"}
PLANNED_COLOUR = "#b0bec5"
DOWNTIME_COLOUR = "#ef9a9a"
GATE_COLOUR = "#4527a0"
PAGE_WIDTH_IN = 7.4  # A4's 210 mm less 2 × 10 mm margins
MAX_HEIGHT_IN = 9.0  # a printed A4 page holds 277 mm less margins; leaves room for a heading and a caption
_DAY = 86400.0


def data_uri(png: bytes | None) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", pad_inches=0.04)
    return buf.getvalue()


def _label(e) -> str:
    title = e.title if len(e.title) <= 30 else e.title[:29] + "…"
    return f"{e.step_id} {title}" + (f" (#{e.attempt})" if e.attempt > 1 else "")


def _span_s(times: list[dt.datetime]) -> float:
    return (max(times) - min(times)).total_seconds() if len(times) > 1 else 0.0


def _time_axis(ax, start: dt.datetime, end: dt.datetime, fontsize: float) -> None:
    pad = max((end - start).total_seconds() * 0.03, 1.0)
    ax.set_xlim(date2num(start - dt.timedelta(seconds=pad)), date2num(end + dt.timedelta(seconds=pad)))
    locator = AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.tick_params(axis="x", labelsize=fontsize)
    ax.xaxis.get_offset_text().set_fontsize(fontsize)
    ax.grid(axis="x", color="#eceff1")


def _gate_lines(ax, gates: list[tuple[str, dt.datetime]], colour: str, style: str, fontsize: float) -> None:
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for label, at in gates:
        x = date2num(at)
        ax.axvline(x, color=colour, linestyle=style, linewidth=0.9, zorder=3)
        ax.text(x, 1.005, label, transform=top, ha="center", va="bottom", fontsize=fontsize, color=colour,
                fontweight="bold", clip_on=False)


def _band(ax, window: tuple[dt.datetime | None, dt.datetime | None]) -> bool:
    start, end = window
    if not start:
        return False
    ax.axvspan(date2num(start), date2num(end or start), color=DOWNTIME_COLOUR, alpha=0.35, zorder=0, linewidth=0,
               gid="downtime")
    return True


def gantt_png(steps: list, *, gates: list[tuple[str, dt.datetime]] | None = None,
              downtime: tuple[dt.datetime | None, dt.datetime | None] = (None, None)) -> bytes | None:
    """:func:`gantt_figure` as PNG bytes; None without steps."""
    fig = gantt_figure(steps, gates=gates, downtime=downtime)
    return _png(fig) if fig is not None else None


def gantt_figure(steps: list, *, gates: list[tuple[str, dt.datetime]] | None = None,
                 downtime: tuple[dt.datetime | None, dt.datetime | None] = (None, None)) -> Figure | None:
    """The plan (left) and the actual run (right), one row per step execution, times in UTC.

    Each panel has its own time axis, so a run of minutes stays readable next to a plan of days.
    The user downtime is shaded (right: ``downtime``, the actual window; left: from the planned end
    of the step that starts it to the planned end of the one that ends it). Gates are vertical
    lines: on the right ``gates`` (label, sign-off time), on the left the planned end of each
    phase. Actual bars are coloured by outcome and labelled with their duration; a bar shorter
    than 0.6 % of the axis is drawn that wide, so a one-second step still shows.
    """
    if not steps:
        return None
    gates = list(gates or [])
    n = len(steps)
    row_in = min(0.2, max(0.11, (MAX_HEIGHT_IN - 1.2) / n))
    fontsize = 6.5 if row_in >= 0.16 else 5.5
    fig = Figure(figsize=(PAGE_WIDTH_IN, min(MAX_HEIGHT_IN, row_in * n + 1.2)))
    ax_plan, ax_act = fig.subplots(1, 2, sharey=True)
    ys = range(n)

    planned = [(y, e) for y, e in zip(ys, steps) if e.planned_start and e.planned_end]
    acted = [(y, e) for y, e in zip(ys, steps) if e.actual_start]

    # -- the plan ---------------------------------------------------------------------------
    if planned:
        p_start = min(e.planned_start for _, e in planned)
        p_end = max(e.planned_end for _, e in planned)
        for y, e in planned:
            ax_plan.barh(y, date2num(e.planned_end) - date2num(e.planned_start), left=date2num(e.planned_start),
                         height=0.7, color=PLANNED_COLOUR, edgecolor="#78909c", hatch="////", linewidth=0.4)
        _time_axis(ax_plan, p_start, p_end, fontsize)
        down_plan = (next((e.planned_end for _, e in planned if e.downtime == "start"), None),
                     next((e.planned_end for _, e in planned if e.downtime == "end"), None))
        _band(ax_plan, down_plan)
        phase_ends: dict[int, dt.datetime] = {}
        for _, e in planned:
            phase_ends[e.phase] = max(phase_ends.get(e.phase, e.planned_end), e.planned_end)
        _gate_lines(ax_plan, [(f"G{p}", t) for p, t in sorted(phase_ends.items())], "#78909c", "--", fontsize)
        ax_plan.set_title(f"Plan — {human_duration(_span_s([p_start, p_end]))}", fontsize=fontsize + 1.5, pad=10)
    else:
        ax_plan.set_title("Plan — no planned times", fontsize=fontsize + 1.5, pad=10)

    # -- the actual run, on its own axis -------------------------------------------------------
    has_band = False
    if acted:
        a_times = [t for _, e in acted for t in (e.actual_start, e.actual_end) if t]
        a_times += [t for _, t in gates] + [t for t in downtime if t]
        a_start, a_end = min(a_times), max(a_times)
        _time_axis(ax_act, a_start, a_end, fontsize)
        lo, hi = ax_act.get_xlim()
        min_w = 0.006 * (hi - lo)
        for y, e in acted:
            left = date2num(e.actual_start)
            width = max(date2num(e.actual_end or e.actual_start) - left, min_w)
            ax_act.barh(y, width, left=left, height=0.55, color=OUTCOME_COLOURS.get(e.outcome, "#455a64"), zorder=2,
                        gid="actual")
            text = human_duration(e.duration_s) if e.duration_s is not None else e.outcome
            right = left + width + 0.008 * (hi - lo)
            if right < hi - 0.12 * (hi - lo):
                ax_act.text(right, y, text, va="center", ha="left", fontsize=fontsize - 1, color="#37474f")
            else:
                ax_act.text(left - 0.008 * (hi - lo), y, text, va="center", ha="right", fontsize=fontsize - 1,
                            color="#37474f")
        has_band = _band(ax_act, downtime)
        _gate_lines(ax_act, gates, GATE_COLOUR, "-", fontsize)
        ax_act.set_title(f"Actual — {human_duration(_span_s([a_start, a_end]))}", fontsize=fontsize + 1.5, pad=10)
    else:
        ax_act.set_title("Actual — not started", fontsize=fontsize + 1.5, pad=10)

    ax_plan.set_yticks(list(ys), [_label(e) for e in steps], fontsize=fontsize)
    ax_plan.set_ylim(n - 0.4, -0.6)
    ax_act.tick_params(axis="y", left=False)
    for ax in (ax_plan, ax_act):
        ax.tick_params(axis="y", length=0)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)

    handles = [Patch(facecolor=PLANNED_COLOUR, edgecolor="#78909c", hatch="////", label="planned")]
    handles += [Patch(color=c, label=f"actual: {o}") for o, c in OUTCOME_COLOURS.items()
                if any(e.outcome == o for e in steps)]
    if has_band or (planned and any(e.downtime for _, e in planned)):
        handles.append(Patch(color=DOWNTIME_COLOUR, alpha=0.5, label="user downtime"))
    handles.append(Line2D([], [], color="#78909c", linestyle="--", label="G: planned end of phase"))
    if gates:
        handles.append(Line2D([], [], color=GATE_COLOUR, label="G: gate signed"))
    fig.tight_layout(w_pad=1.2)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 4),
               fontsize=fontsize, frameon=False)  # below the axes; savefig's tight box takes it in
    return fig


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
    fig = Figure(figsize=(PAGE_WIDTH_IN, 2.4))
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
    times = [p[0] for points in series.values() for p in points]
    pad = max(_span_s(times) * 0.05, 30.0)  # one sample alone would get an axis of years
    ax.set_xlim(date2num(min(times) - dt.timedelta(seconds=pad)), date2num(max(times) + dt.timedelta(seconds=pad)))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.tick_params(labelsize=7)
    ax.xaxis.get_offset_text().set_fontsize(7)
    ax.yaxis.label.set_fontsize(8)
    ax.grid(color="#eceff1")
    ax.legend(fontsize=7)
    ax.set_title("Throughput over time (UTC)", fontsize=9)
    fig.tight_layout()
    return _png(fig)
