"""Customer notices: rendered from Jinja2 templates, delivered through apprise, all journaled.

Kinds (one template each, ``journal/templates/notices/<lang>/<kind>.j2`` with a ``title`` and a
``body`` block): ``announcement`` (backup date and expected downtime, from the forecast),
``downtime-started``, ``progress`` (what is known, the impact, when the next update comes),
``workaround`` (the 1-hour rung of the escalation ladder), ``completed``, and ``summary`` (the
post-incident summary of seed 004: UTC window, who was affected, timeline, root causes,
corrective actions, and the journal's anchor ``runs=N head=HEX`` for the customer to keep), ``stragglers`` (phase 3: to the people still working in the cloud) and
``sync-alert`` (to the contractor: a sweep quarantined a record or spent its request budget).
English is shipped, Russian and German too; ``[notices] templates_dir``
overrides any of them per language, a missing one falls back to English.

Every notice, sent or failed, is an event of kind ``notice`` in the journal with its text and,
per target, whether it was delivered (targets are journaled as scheme and host only: tokens
in apprise URLs never reach the journal). In dry-run mode the notices are written to files.
Notices that promise an update store ``next_update_at``; :func:`next_update_due` tells the flow
when it must send the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

import jinja2

from connectors.outputs import write_private_text
from connectors.secrets import redact

from .configuration import TEMPLATES_DIR, NoticesSection
from .events import EventKind
from .forecast import Forecast, human_duration
from .models import utcnow

KINDS = ("announcement", "downtime-started", "progress", "workaround", "completed", "summary", "stragglers",
         "sync-alert")
# Notices that promise no next update (the downtime's updates are promised by the others).
_FINAL_KINDS = {"completed", "summary", "stragglers", "sync-alert"}
# Values a template may test for; the required ones (e.g. ``known`` of a progress notice) have no default.
_OPTIONAL = {"eta": None, "eta_latest": None, "latest_end": None, "open_issues": [], "resolution": "",
             "timeline": [], "root_causes": [], "immediate_actions": [], "corrective_actions": [], "downtime_s": None,
             "anchor": None}
# Events the post-incident summary's timeline shows besides the notices.
_TIMELINE_KINDS = {EventKind.DOWNTIME_START, EventKind.DOWNTIME_END, EventKind.ISSUE, EventKind.ISSUE_RESOLVED,
                   EventKind.LADDER}
_HOST_SAFE_SCHEMES = {"json", "jsons", "xml", "xmls", "form", "forms", "mailto", "mailtos", "ntfy", "ntfys"}

log = logging.getLogger("cloud2box.notices")


@dataclass
class Notice:
    kind: str
    language: str
    title: str
    body: str


@dataclass
class NoticeResult:
    notice: Notice
    delivered: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"target", "error"}
    file: Path | None = None
    next_update_at: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def target_label(url: str) -> str:
    """What the journal may say about a target: scheme and host, never a path, user or token."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme or "?"
    if scheme.lower() in _HOST_SAFE_SCHEMES and parts.hostname:
        return f"{scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return f"{scheme}://***"


def _with_timeouts(url: str, timeout_s: float) -> str:
    """Bound every delivery: apprise's cto/rto URL arguments (connect and read timeouts)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    extra = {k: f"{timeout_s:g}" for k in ("cto", "rto") if k not in query}
    if not extra:
        return url
    joined = parts.query + ("&" if parts.query else "") + urllib.parse.urlencode(extra)
    return urllib.parse.urlunsplit(parts._replace(query=joined))


def template_env(language: str, override_dir: Path | None = None, tz: str = "UTC") -> jinja2.Environment:
    """The Jinja2 environment of one language: override dir, shipped language, shipped English."""
    search = []
    if override_dir:
        search.append(str(Path(override_dir) / language))
    search += [str(TEMPLATES_DIR / "notices" / language), str(TEMPLATES_DIR / "notices" / "en")]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(search), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
    zone = ZoneInfo(tz)

    def when(value: dt.datetime | None) -> str:
        if value is None:
            return "?"
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return f"{value.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC ({value.astimezone(zone):%H:%M} {tz})"

    def utc(value: dt.datetime | None) -> str:
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        return f"{value.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC" if value else "?"

    env.filters.update(when=when, utc=utc, duration=human_duration)
    return env


class Notifier:
    """Renders and delivers notices for one run.

    Args:
        journal: the :class:`journal.store.Journal`.
        run_id: the run the notices belong to.
        section: the ``[notices]`` config.
        urls: resolved apprise URLs (see :func:`journal.configuration.resolve_notice_urls`).
        context: values every template may use: ``name``, ``portal``, ``box_portal``, ``contact``,
            ``timezone`` (defaults filled in).
        out_dir: where dry-run notices go (default ``section.out_dir``).
        apprise_factory: builds an ``apprise.Apprise``; tests may pass their own.
        clock: returns "now" (tests pass a fake clock).
    """

    def __init__(self, journal, run_id: str, section: NoticesSection, urls: list[str], *,
                 context: dict | None = None, out_dir: Path | None = None,
                 apprise_factory: Callable | None = None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.journal, self.run_id, self.section, self.urls = journal, run_id, section, list(urls)
        self.context = {"name": "", "portal": "", "box_portal": "", "contact": "", "timezone": "UTC",
                        "audience": section.audience, "workaround": section.workaround,
                        "next_update_minutes": section.next_update_minutes, **(context or {})}
        self.out_dir = Path(out_dir or section.out_dir or "cloud2box-out/notices")
        self.clock = clock
        if apprise_factory is None:
            import apprise

            apprise_factory = apprise.Apprise
        self._apprise_factory = apprise_factory
        self.env = template_env(section.language, section.templates_dir, self.context["timezone"])

    # -- rendering --------------------------------------------------------------------------
    def render(self, kind: str, **values) -> Notice:
        if kind not in KINDS:
            raise ValueError(f"unknown notice kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "progress":
            missing = [k for k in ("known", "impact") if not values.get(k)]
            if missing:
                raise ValueError(f"a progress notice must say {' and '.join(missing)}")
        if kind not in _FINAL_KINDS:
            values.setdefault("next_update_at", self.clock() + dt.timedelta(minutes=self.section.next_update_minutes))
        template = self.env.get_template(f"{kind}.j2")
        ctx = template.new_context({**_OPTIONAL, **self.context, "now": self.clock(), **values})
        title = "".join(template.blocks["title"](ctx)).strip()
        body = "".join(template.blocks["body"](ctx)).strip() + "\n"
        return Notice(kind, self.section.language, redact(title), redact(body))

    # -- delivery ---------------------------------------------------------------------------
    def send(self, kind: str, **values) -> NoticeResult:
        """Render and deliver one notice (or write it, in dry-run); journal the outcome.

        Notices other than ``completed``/``summary`` promise the next update in
        ``next_update_minutes`` unless ``next_update_at`` is given.
        """
        now = self.clock()
        if kind not in _FINAL_KINDS:
            values.setdefault("next_update_at", now + dt.timedelta(minutes=self.section.next_update_minutes))
        notice = self.render(kind, **values)
        result = NoticeResult(notice, next_update_at=values.get("next_update_at"))
        if self.section.dry_run:
            n = len(list(self.out_dir.glob("*.md"))) + 1 if self.out_dir.exists() else 1
            result.file = write_private_text(self.out_dir / f"{n:03d}-{now:%Y%m%dT%H%M%SZ}-{kind}.md",
                                             f"# {notice.title}\n\n{notice.body}")
        else:
            for url in self.urls:
                label = target_label(url)
                try:
                    ap = self._apprise_factory()
                    if not ap.add(_with_timeouts(url, self.section.timeout_s)):
                        result.failed.append({"target": label, "error": "not a valid apprise URL"})
                        continue
                    if ap.notify(title=notice.title, body=notice.body):
                        result.delivered.append(label)
                    else:
                        result.failed.append({"target": label, "error": "delivery failed (see the log)"})
                except Exception as exc:  # a notice must never stop the migration; it is journaled
                    result.failed.append({"target": label, "error": redact(f"{type(exc).__name__}: {exc}")})
        self._journal(result, now)
        return result

    def _journal(self, result: NoticeResult, now: dt.datetime) -> None:
        n = result.notice
        if self.section.dry_run:
            message = f"notice '{n.kind}' written to {result.file.name} (dry run): {n.title}"
        elif result.failed:
            message = (f"notice '{n.kind}' FAILED for {len(result.failed)} of {len(self.urls)} target(s): "
                       f"{', '.join(f['target'] for f in result.failed)} — {n.title}")
        elif not self.urls:
            message = f"notice '{n.kind}' not sent: no [notices] urls configured — {n.title}"
        else:
            message = f"notice '{n.kind}' sent to {len(result.delivered)} target(s): {n.title}"
        if result.failed:
            log.warning("%s", message)
        self.journal.add_event(self.run_id, EventKind.NOTICE, message, data={
            "notice": n.kind, "language": n.language, "title": n.title, "body": n.body,
            "sent_at": now.isoformat(), "dry_run": self.section.dry_run,
            "delivered": result.delivered, "failed": result.failed,
            "file": str(result.file) if result.file else None,
            "next_update_at": result.next_update_at.isoformat() if result.next_update_at else None,
        })


# -- helpers for the flow -----------------------------------------------------------------------

def notices_sent(journal, run_id: str) -> list:
    return journal.events(run_id, EventKind.NOTICE)


def next_update_due(journal, run_id: str) -> dt.datetime | None:
    """When the last notice promised the next update (None: nothing promised, or the move is over)."""
    events = notices_sent(journal, run_id)
    if not events:
        return None
    last = events[-1].data
    if last.get("notice") in _FINAL_KINDS or not last.get("next_update_at"):
        return None
    return dt.datetime.fromisoformat(last["next_update_at"])


def announcement_values(forecast: Forecast, backup_date: dt.datetime) -> dict:
    """Values for the ``announcement`` notice from the forecast (downtime window P50/P90)."""
    down = forecast.downtime() or {}
    return {"backup_date": backup_date, "window_start": down.get("start"), "window_end": down.get("end_p50"),
            "window_end_latest": down.get("end_p90"), "expected_duration": down.get("p50_s"),
            "latest_duration": down.get("p90_s")}


def summary_values(journal, run_id: str, *, corrective_actions: list[str] | None = None,
                   resolution: str = "") -> dict:
    """Values for the ``summary`` notice (seed 004) from the journal: window, timeline, causes."""
    from .export import downtime_window
    from .triage import issues

    start, end = downtime_window(journal, run_id)
    timeline = []
    for ev in journal.events(run_id):
        if ev.kind == EventKind.NOTICE:
            timeline.append({"at": ev.at, "text": ev.data.get("title") or ev.message})
        elif ev.kind in _TIMELINE_KINDS:
            timeline.append({"at": ev.at, "text": ev.message})
    found = issues(journal, run_id)
    root_causes = [f"{i.title}: {i.root_cause}" for i in found if i.root_cause]
    actions = [f"{i.title}: {i.resolution}" for i in found if i.resolution]
    return {"window_start": start, "window_end": end,
            "downtime_s": (end - start).total_seconds() if start and end else None,
            "timeline": sorted(timeline, key=lambda t: t["at"]), "issues": found,
            "root_causes": root_causes, "immediate_actions": actions,
            "corrective_actions": corrective_actions or [], "resolution": resolution}
