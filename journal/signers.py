"""One-time codes that bind a sign-off to a person of the roster, and the notices that tell them.

A code is 8 random digits (:mod:`secrets`), issued for one *purpose* (a step's confirmation, a
gate, an override) to one signer, and sent to that signer's contact. The journal keeps only
``HMAC-SHA256(key, run | purpose | signer | code)`` in ``c2b_sign_codes`` (a chained table), with
its expiry and status: ``open``, ``used`` (once, set through an optimistic version check, so two
answers cannot both use it), or ``superseded`` (a newer code was sent for the same purpose).

By default the key is :data:`PROCESS_KEY`, random per process and never written anywhere: a code
is checked by the process that sent it (the paused flow, or the ``issues resolve`` command that waits
for it); a code of a process that is gone is void, and the resumed run sends new ones. A run that
must give its process up while it waits (a deployment's run, suspended until the answer comes)
needs a key that outlives the process: ``[signoff] code_key_secret`` names a ``[secrets]`` entry
for it. Whoever holds that key and reads the journal can try all 10^8 codes against a stored hash
in seconds, so it belongs in the worker's secret store (a Prefect Secret block, the worker's
environment), not with the engineers who read the journal. Codes of another key are never accepted.

Notices to a person (:class:`PersonNotifier`) are sent through apprise like the users' notices,
but one at a time and to that person only; each is journaled as a ``person-notice`` event whose
text shows the code as ``********``. Codes are registered as secrets, so a code that slips into a
log line is masked too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import ForeignKey, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.orm.exc import StaleDataError

from connectors.secrets import redact, register_secret

from .configuration import NoticesSection
from .events import EventKind
from .models import Base, utcnow

CODE_DIGITS = 8
CODE_MASK = "*" * CODE_DIGITS
PROCESS_KEY = secrets.token_bytes(32)
PERSON_KINDS = ("sign-request", "override-request", "run-failed")

log = logging.getLogger("cloud2box.signers")


class SignCode(Base):
    """One one-time code: its keyed hash, never the code."""

    __tablename__ = "c2b_sign_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("c2b_runs.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(120))  # e.g. step-2-10-attempt-1, gate-1, override-issue-3
    signer: Mapped[str] = mapped_column(String(200))  # the roster's name
    key_id: Mapped[str] = mapped_column(String(16))  # which process key made the hash (public, reveals nothing)
    code_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="open")  # open|used|superseded
    used_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    __mapper_args__ = {"version_id_col": version}  # UPDATE … WHERE version = n: a code is used once


def key_id(key: bytes) -> str:
    return hmac.new(key, b"cloud2box sign-code key id", hashlib.sha256).hexdigest()[:16]


def normalise(code: str) -> str:
    """What a person typed, as compared: blanks and dashes dropped (``1234 5678`` is ``12345678``)."""
    return "".join(ch for ch in code if ch not in " -\t")


@dataclass(frozen=True)
class CodeCheck:
    """The outcome of :meth:`CodeBook.check`: ``ok``, or why not (said to the person; never the code)."""

    ok: bool
    reason: str = ""


class CodeBook:
    """Issue and check the one-time codes of one journal (see the module doc)."""

    def __init__(self, journal, *, key: bytes = PROCESS_KEY, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.journal, self._key, self.clock = journal, key, clock
        self.key_id = key_id(key)

    def _hash(self, run_id: str, purpose: str, signer: str, code: str) -> str:
        text = "|".join([run_id, purpose, signer, normalise(code)]).encode("utf-8")
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def issue(self, run_id: str, purpose: str, signer: str, ttl: dt.timedelta) -> tuple[str, dt.datetime]:
        """A new code for ``signer`` and ``purpose`` (their older open codes for it are superseded);
        returns the code, for the notice only, and when it expires."""
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        register_secret(code)
        now = self.clock()
        with self.journal.session() as s:
            for old in s.scalars(select(SignCode).where(SignCode.run_id == run_id, SignCode.purpose == purpose,
                                                        SignCode.signer == signer, SignCode.status == "open")):
                old.status = "superseded"
            s.add(SignCode(run_id=run_id, purpose=purpose, signer=signer, key_id=self.key_id,
                           code_hash=self._hash(run_id, purpose, signer, code), issued_at=now, expires_at=now + ttl))
        return code, now + ttl

    def check(self, run_id: str, purpose: str, signer: str, code: str) -> CodeCheck:
        """Is ``code`` the open, unexpired code of ``signer`` for ``purpose``? On success it is used
        up in the same transaction; a second check of it fails ("already used")."""
        typed = normalise(code or "")
        if not typed:
            return CodeCheck(False, f"no code was given; a new code was sent to {signer}")
        if len(typed) != CODE_DIGITS or not typed.isdigit():
            return CodeCheck(False, f"the code must be {CODE_DIGITS} digits")
        now = self.clock()
        try:
            with self.journal.session() as s:
                rows = list(s.scalars(select(SignCode).where(SignCode.run_id == run_id, SignCode.signer == signer,
                                                             SignCode.key_id == self.key_id)
                                      .order_by(SignCode.id.desc())))
                match = next((r for r in rows if hmac.compare_digest(
                    r.code_hash, self._hash(run_id, r.purpose, signer, typed))), None)
                if match is None:
                    return CodeCheck(False, f"the code is not the one sent to {signer} for this prompt")
                if match.status == "used":
                    return CodeCheck(False, "the code was used already; a code is good for one answer")
                if match.purpose != purpose:
                    return CodeCheck(False, "the code was sent for another prompt; use the one sent for this one")
                if match.status == "superseded":
                    return CodeCheck(False, "a newer code was sent since; use the newest one")
                if now >= match.expires_at:
                    return CodeCheck(False, f"the code expired at {match.expires_at:%Y-%m-%d %H:%M} UTC; a new code "
                                            f"was sent to {signer}")
                match.status, match.used_at = "used", now
        except StaleDataError:  # another answer used it between our read and our write
            return CodeCheck(False, "the code was used already; a code is good for one answer")
        return CodeCheck(True)


def codes_of(journal, run_id: str) -> list[SignCode]:
    """The run's codes (hashes, expiry, status), oldest first: what the journal knows of them."""
    with journal.session() as s:
        return list(s.scalars(select(SignCode).where(SignCode.run_id == run_id).order_by(SignCode.id)))


@dataclass
class PersonNotice:
    kind: str
    to: str
    target: str  # scheme://host only (journal.notices.target_label)
    title: str
    delivered: bool
    error: str = ""


class PersonNotifier:
    """Tells one person of the roster what to do (with their code) through their own contact.

    Args:
        journal, run_id: where each notice is journaled (``run_id`` None: not journaled).
        section: ``[notices]`` (language, templates, timeout). Its ``dry_run`` does not apply: a code
            written to a file would sign for whoever reads the file.
        context: values every template may use (``name``, ``portal``, ``timezone`` …).
        apprise_factory: builds an ``apprise.Apprise`` (tests may pass their own).
    """

    def __init__(self, journal, run_id: str | None, section: NoticesSection, *, context: dict | None = None,
                 apprise_factory: Callable | None = None) -> None:
        self.journal, self.run_id, self.section = journal, run_id, section
        self.context = {"name": "", "portal": "", "timezone": "UTC", **(context or {})}
        from .notices import template_env  # notices → forecast → export → store → this module

        if apprise_factory is None:
            import apprise

            apprise_factory = apprise.Apprise
        self._apprise_factory = apprise_factory
        self.env = template_env(section.language, section.templates_dir, self.context["timezone"])

    def _render(self, kind: str, values: dict) -> tuple[str, str]:
        template = self.env.get_template(f"{kind}.j2")
        ctx = template.new_context({**self.context, **values})
        title = "".join(template.blocks["title"](ctx)).strip()
        return title, "".join(template.blocks["body"](ctx)).strip() + "\n"

    def send(self, kind: str, *, to: str, role: str, party: str, url: str, code: str | None = None,
             step_id: str | None = None, **values) -> PersonNotice:
        """Render ``kind`` for ``to`` and deliver it to ``url``; journal it with the code masked."""
        from .notices import _with_timeouts, target_label

        if kind not in PERSON_KINDS:
            raise ValueError(f"unknown person notice {kind!r}; known: {', '.join(PERSON_KINDS)}")
        # what people typed or portals said is redacted; the code is put in after, for the delivery only
        values = {k: redact(v) if isinstance(v, str) else v for k, v in values.items()}
        values.update(person=to, role=role, party=party)
        title, body = self._render(kind, {**values, "code": code})
        _, journaled_body = self._render(kind, {**values, "code": CODE_MASK if code else None})
        label = target_label(url)
        notice = PersonNotice(kind, to, label, redact(title), delivered=False)
        try:
            ap = self._apprise_factory()
            if not ap.add(_with_timeouts(url, self.section.timeout_s)):
                notice.error = "not a valid apprise URL"
            elif ap.notify(title=title, body=body):
                notice.delivered = True
            else:
                notice.error = "delivery failed (see the log)"
        except Exception as exc:  # noqa: BLE001 — a notice never stops the run; it is journaled
            notice.error = redact(f"{type(exc).__name__}: {exc}")
        if not notice.delivered:
            log.warning("notice '%s' to %s (%s) FAILED: %s", kind, to, label, notice.error)
        if self.journal is not None and self.run_id is not None:
            what = "sent to" if notice.delivered else "FAILED for"
            self.journal.add_event(self.run_id, EventKind.PERSON_NOTICE,
                                   f"notice '{kind}' {what} {to} ({role}, {party}) at {label}: {notice.title}",
                                   data={"notice": kind, "to": to, "role": role, "party": party, "target": label,
                                         "title": notice.title, "body": redact(journaled_body),
                                         "with_code": bool(code), "delivered": notice.delivered,
                                         "error": notice.error}, step_id=step_id)
        return notice

