"""The one configuration tree of cloud2box, loaded from TOML and validated once at start.

Every problem is reported at once, each naming the file and the dotted key. Secrets are never
in the file: a ``SecretRef`` names an environment variable or a Prefect Secret block, resolved
into ``SecretStr`` by :func:`resolve_secrets` and registered for redaction.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from checklists.toml_model import read_toml, validation_problems
from connectors import platforms
from connectors.errors import ConfigError
from connectors.platform import Platform
from connectors.secrets import SecretRef, register_secret
from checklists.configuration import VerifySection
from connectors.box_host.configuration import BoxHostSection
from connectors.http_download.configuration import UrlsBackupSection
from journal.configuration import ForecastSection, LadderSection, NoticesSection, TriageSection

CHECKLISTS_DIR = Path(__file__).resolve().parent.parent / "checklists"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MigrationSection(_Model):
    name: str = Field(min_length=1, description="a short name of this migration, e.g. the company")
    platform: str = Field(default=platforms.DEFAULT, description="the CRM platform (connectors.platforms)")
    portal: str = Field(description="the cloud portal's address, e.g. https://crm.example.com")
    box_portal: str = Field(default="", description="the box portal's address after the move")
    timezone: str = "UTC"
    contact: str = Field(default="", description="who users contact during the downtime")

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, v: str) -> str:
        if v not in platforms.names():
            raise ValueError(f"{v!r} is not a known platform; known: {', '.join(platforms.names())}")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Berlin") from None
        return v

    @field_validator("portal", "box_portal")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not a URL; write it as https://host")
        return v.rstrip("/")


class JournalSection(_Model):
    url: str = Field(
        default="sqlite:///cloud2box-journal.db",
        description="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg2://user@host/db",
    )
    out_dir: Path = Path("cloud2box-out")
    anchor: str = Field(
        default="", description="where the journal's anchor (run count + head hash) goes at every gate and at the "
                                "end: a file to append to, an http(s) URL to POST to, or the name of a [secrets] "
                                "entry holding one; the auditor keeps it, away from the journal")
    anchor_timeout_s: float = Field(default=10.0, gt=0, le=300, description="timeout of the anchor's POST")
    chain_key_secret: str = Field(
        default="", description="[secrets] entry whose value keys the journal's hash chain (HMAC-SHA256): a "
                                "rewrite then needs the key too; keep the key away from the journal")

    @field_validator("url")
    @classmethod
    def _supported(cls, v: str) -> str:
        if not v.startswith(("sqlite", "postgresql", "mysql", "mariadb")):
            raise ValueError(f"unsupported journal URL {v.split(':', 1)[0]!r}; use sqlite:/// or postgresql+psycopg2://")
        return v


class PrefectSection(_Model):
    pause_timeout_s: int = Field(default=3 * 24 * 3600, gt=0, description="how long a sign-off may wait")
    poll_interval_s: int = Field(default=10, gt=0, description="how often a paused run checks for input")
    suspend_while_waiting: bool = Field(
        default=True, description="a deployment's run waiting for a person exits its process and is started again "
                                  "when the answer comes (Prefect's suspend), unless work must go on meanwhile "
                                  "(the pre-sync, sweeps, the downtime's notices)")


class RunbookSection(_Model):
    path: Path = CHECKLISTS_DIR / "runbook.toml"
    risks: Path = Field(default=CHECKLISTS_DIR / "risks.toml", description="the risk register shown at gate 1")
    manual_steps: list[str] = Field(default_factory=list,
                                    description="steps to do by hand even though the runbook automates them")


class _SyncLoopSection(_Model):
    """What the two sweep loops share (straggler sweeps in phase 3, the pre-sync in phase 2):
    cadence, the loop guard (seed 000) and the request budgets."""

    interval_minutes: float = Field(15.0, gt=0, description="a sweep every N minutes")
    quarantine_changes: int = Field(4, ge=1, description="K: a record seen changed by more than K sweeps within "
                                                         "the window is quarantined (not synced) and alerted")
    quarantine_window_minutes: float = Field(120.0, gt=0, description="M: the window of the change count")
    requests_per_sweep: int = Field(300, ge=10, description="hard cap of REST requests of one sweep")
    requests_per_day: int = Field(5000, ge=10, description="hard cap of the sweeps' REST requests per UTC day")
    overlap_seconds: float = Field(120.0, ge=0, description="each sweep re-lists this much before the last one")
    max_sweeps: int = Field(1000, ge=1, description="a bound on sweeps per step (3 days at 5 min is 864)")
    alert_urls: list[str] = Field(default_factory=list,
                                  description="apprise URLs (or [secrets] names) of the contractor, for sync alerts; "
                                              "empty: alerts are journaled and written next to the notices")
    min_gap_seconds: float = Field(30.0, ge=0, description="events never start sweeps closer than this")

    @model_validator(mode="after")
    def _quarantine_reachable(self) -> "_SyncLoopSection":
        # a sweep sees one modification time per record: the window holds at most window/interval + 1
        sweeps_in_window = int(self.quarantine_window_minutes / self.interval_minutes) + 1
        if self.quarantine_changes >= sweeps_in_window:
            raise ValueError(f"quarantine_changes = {self.quarantine_changes} can never be passed: a window of "
                             f"{self.quarantine_window_minutes:g} min holds only {sweeps_in_window} sweeps every "
                             f"{self.interval_minutes:g} min; lower quarantine_changes or widen the window")
        return self


class PresyncSection(_SyncLoopSection):
    """The pre-sync (issue 16): from the end of the portal set-up (2.4) until the sales team stops in
    the cloud (2.10), sweeps keep the box in step so step 2.11 moves only minutes of changes."""

    enabled: bool = Field(True, description="keep the box in step while phase 2's steps wait for people "
                                            "(needs [crm_delta]); off: 2.11 moves the whole delta since the backup")
    interval_minutes: float = Field(10.0, gt=0, description="a pre-sync pass every N minutes")
    quarantine_window_minutes: float = Field(60.0, gt=0, description="M: the window of the change count")
    requests_per_sweep: int = Field(3000, ge=10, description="hard cap of REST requests of one pass (the first "
                                                             "pass moves everything since the backup)")
    requests_per_day: int = Field(60000, ge=10, description="hard cap of the passes' REST requests per UTC day")
    max_sweeps: int = Field(5000, ge=1, description="a bound on passes (two weeks at 5 min is 4032)")
    deleted_scan_minutes: float = Field(60.0, ge=0, description="how often a pass compares the whole portal's "
                                                                "record IDs to find records deleted in the cloud "
                                                                "(0: every pass)")


class SweepSection(_SyncLoopSection):
    """Phase 3 straggler sweeps and their loop guard (seed 000): cadence, quarantine, budgets."""

    enabled: bool = Field(True, description="sweep while the sweep step (3.1) is open")
    notify_stragglers: bool = Field(True, description="send the users still working in the cloud a notice")
    events_listen: str = Field("", description="host:port to receive the cloud's outgoing webhook events "
                                               "(ONCRMLEADADD …) and sweep early; empty: interval only")
    events_token_secret: str = Field("", description="[secrets] entry holding the outgoing webhook's "
                                                     "application_token (events without it are refused)")

    @field_validator("events_listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        if v:
            host, _, port = v.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"{v!r} is not host:port, e.g. 127.0.0.1:8765")
        return v

    @model_validator(mode="after")
    def _token_with_listener(self) -> "SweepSection":
        if self.events_listen and not self.events_token_secret:
            raise ValueError("events_listen needs events_token_secret: the outgoing webhook's application_token "
                             "is the only proof an event comes from the portal")
        return self


Party = Literal["customer", "contractor"]


class RosterEntry(_Model):
    """A person who may confirm steps or sign gates for a party. The forms offer the names of the
    roster (a customer's step and a gate: the customers only), the person's one-time codes and the
    "you must act" notices go to ``contact``, and the journal records the name and role given here."""

    name: str = Field(min_length=1, max_length=120, description="full name, as the forms offer it and the "
                                                                "journal records it")
    role: str = Field(min_length=1, max_length=120, description="e.g. Head of Sales, IT Director, Migration engineer")
    party: Party = Field(description="customer: confirms the customer's steps, signs the gates; contractor: "
                                     "confirms the contractor's steps")
    contact: str = Field(min_length=1, description="an apprise URL (mailtos://…, tgram://…, json://…) or the name "
                                                   "of a [secrets] entry holding one; a URL with a token must be a "
                                                   "secret: one-time codes are sent there")
    engineer: bool = Field(default=False, description="told when a run fails or crashes (default: every "
                                                      "contractor, when nobody is marked)")

    @field_validator("name", "role")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if not v.strip() or any(c in v for c in "\t\r\n"):
            raise ValueError("must be one line of text, not blank")
        return v.strip()


class SignoffSection(_Model):
    """How sign-offs are bound to the roster's people (see flows/signing.py)."""

    code_ttl_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60,
                                    description="a one-time code expires after this long; a signer whose code "
                                                "expired answers with an empty code and gets a new one")
    code_key_secret: str = Field(
        default="", description="[secrets] entry whose value keys the one-time codes' hashes (at least 32 "
                                "characters); with it a deployment's run waiting for a customer's code holds no "
                                "process (suspended), without it each process keys its own codes and the run "
                                "waits in its process")


def _by_platform(sections: list[type[BaseModel]]) -> Any:
    """One config section of every registered platform, told apart by its ``platform`` field (a
    discriminated union; one platform needs no discriminator)."""
    if len(sections) == 1:
        return sections[0]
    return Annotated[Union[tuple(sections)], Field(discriminator="platform")]


_PLATFORMS = platforms.load_all()
CrmSection = _by_platform([p.crm.section for p in _PLATFORMS])
PostRestoreSection = _by_platform([p.restore.post_restore_section for p in _PLATFORMS])

# [backup]: plain part URLs or a platform's own delivery, told apart by ``source``
BackupConfig = Annotated[Union[UrlsBackupSection, *(p.delivery.section for p in _PLATFORMS)],
                         Field(discriminator="source")]
_NAMES = {p.name for p in _PLATFORMS}
_UNION_TAGS = {"backup": {"urls", *_NAMES}, "crm_delta": _NAMES, "post_restore": _NAMES}


class Config(_Model):
    """The whole configuration; ``source`` is the file it came from (for messages)."""

    migration: MigrationSection
    journal: JournalSection = JournalSection()
    prefect: PrefectSection = PrefectSection()
    runbook: RunbookSection = RunbookSection()
    backup: BackupConfig | None = Field(default=None, description="step 2.3: where the backup comes from")
    box_host: BoxHostSection | None = Field(default=None, description="steps 1.1, 1.2, 1.5, 2.3, 2.4: the box host over SSH")
    post_restore: PostRestoreSection = Field(description="step 2.4: the platform's settings after restore")
    crm_delta: CrmSection | None = Field(default=None, description="step 2.11: the CRM records since the backup")
    presync: PresyncSection = Field(default_factory=PresyncSection, description="steps 2.5–2.10: the pre-sync "
                                                                                 "keeps the box in step (needs "
                                                                                 "[crm_delta])")
    sweeps: SweepSection = Field(default_factory=SweepSection, description="step 3.1: straggler sweeps (needs "
                                                                               "[crm_delta])")
    verify: VerifySection = Field(default_factory=VerifySection, description="checks before steps 2.8, 2.9, 3.2")
    notices: NoticesSection = NoticesSection()
    ladder: LadderSection = LadderSection()
    forecast: ForecastSection = ForecastSection()
    triage: TriageSection = TriageSection()
    roster: list[RosterEntry] = Field(default_factory=list, description="who signs: [[roster]] entries (required "
                                                                        "for a cutover)")
    signoff: SignoffSection = SignoffSection()
    secrets: dict[str, SecretRef] = Field(
        default_factory=dict, description="named secrets, e.g. cloud_webhook = {env = 'C2B_CLOUD_WEBHOOK'}"
    )
    source: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _platform_defaults(cls, data: Any) -> Any:
        """Fill in what ``[migration] platform`` implies, so a file names its platform once: the
        tag of each platform section, the platform's own backup delivery when ``[backup] source``
        is not given, and the platform's box layout under ``[box_host]``."""
        if not isinstance(data, dict) or not isinstance(data.get("migration"), dict):
            return data
        name = data["migration"].get("platform", platforms.DEFAULT)
        if name not in platforms.names():
            return data  # MigrationSection names the problem
        data = dict(data)
        for key in ("crm_delta", "post_restore"):
            section = data.get(key, {} if key == "post_restore" else None)
            if isinstance(section, dict):
                data[key] = {"platform": name, **section}
        if isinstance(data.get("backup"), dict):
            data["backup"] = {"source": name, **data["backup"]}
        if isinstance(data.get("box_host"), dict):
            data["box_host"] = _deep_merge(platforms.get(name).restore.box_defaults, data["box_host"])
        return data

    @model_validator(mode="after")
    def _one_platform(self) -> "Config":
        """Every platform section belongs to the migration's platform (a file may name another
        platform's section explicitly; its parts, clients and fixes would not fit this one)."""
        name = self.migration.platform
        tagged = [("backup", "source", self.backup, {"urls", name}), ("crm_delta", "platform", self.crm_delta, {name}),
                  ("post_restore", "platform", self.post_restore, {name})]
        wrong = [f"[{key}] {tag} = {getattr(section, tag)!r} does not fit [migration] platform = {name!r}"
                 for key, tag, section, allowed in tagged if section is not None and getattr(section, tag) not in allowed]
        if wrong:
            raise ValueError("; ".join(wrong))
        return self

    def roster_entry(self, name: str) -> RosterEntry | None:
        """The roster's person of that name (exactly as the forms offer it), or None."""
        return next((p for p in self.roster if p.name == name), None)

    @property
    def platform(self) -> Platform:
        """The CRM platform ``[migration] platform`` names."""
        return platforms.get(self.migration.platform, source=self.source)

    def snapshot(self) -> dict:
        """A JSON-able copy for the journal: references only, never a secret value."""
        return self.model_dump(mode="json")


_MISSING_FILE = "file not found; copy config.example.toml and edit it"
# What a [secrets] entry's name looks like; a ``*_secret`` field holding anything else is taken for a
# pasted secret value and never shown.
SECRET_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# Characters no config string needs: C0/C1 controls but tab and newline (a NUL ends a C string and a
# PostgreSQL text), and the bidi controls that make text read differently than it is (Trojan Source).
_HOSTILE_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_STRING = 10_000  # the longest config string (a notice's workaround text is the longest real one)


def load_config(path: str | os.PathLike, *, overrides: dict | None = None) -> Config:
    """Load and validate ``path``; raise :class:`ConfigError` listing every problem."""
    raw = read_toml(path, missing=_MISSING_FILE)
    return config_from_dict(raw, source=str(path), overrides=overrides)


def config_from_dict(raw: dict, *, source: str = "<dict>", overrides: dict | None = None) -> Config:
    data = _deep_merge(raw, overrides or {})
    # a secret value pasted where a secret's NAME belongs is taken out before pydantic sees it: its
    # errors carry the input (input_value) and the messages of some validators repeat it
    problems = _pasted_secrets(data) + _hostile_strings(data)
    data["source"] = source
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, problems + validation_problems(exc, union_tags=_UNION_TAGS)) from None
    problems += [f"[{key}] file {path} not found" for key, path in
                 (("runbook.path", config.runbook.path), ("runbook.risks", config.runbook.risks),
                  ("verify.path", config.verify.path)) if not Path(path).exists()]
    problems += _roster_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _roster_problems(config: Config) -> list[str]:
    """Names tell people apart (compared without case and extra blanks), every contact is a URL or a
    [secrets] name, and a roster has a customer to sign the gates. A contact's value is never echoed:
    it may be a token pasted where its name belongs."""
    problems, seen = [], {}
    for i, person in enumerate(config.roster):
        folded = " ".join(person.name.split()).casefold()
        if folded in seen:
            problems.append(f"[roster.{i}.name] {person.name!r} is already the name of roster.{seen[folded]}; names "
                            "must tell people apart (add a middle initial or the company)")
        seen.setdefault(folded, i)
        if person.contact not in config.secrets and "://" not in person.contact:
            problems.append(f"[roster.{i}.contact] of {person.name!r} is neither an apprise URL (scheme://…) nor the "
                            "name of a [secrets] entry (the value is not shown); write the URL, or put it into "
                            "[secrets] and write that entry's name")
    if config.roster and not any(p.party == "customer" for p in config.roster):
        problems.append('[roster] has nobody with party = "customer"; the gates and the customer\'s steps are signed '
                        "by the customer: add the customer's signer(s)")
    return problems


def _pasted_secrets(data: dict, prefix: str = "") -> list[str]:
    """Problems for every ``*_secret`` key whose value is no [secrets] name; those keys are removed
    from ``data`` (in place, nested tables copied first) so their values reach no message."""
    problems = []
    if not prefix and isinstance(data.get("secrets"), dict):
        data["secrets"] = table = dict(data["secrets"])
        for key, entry in list(table.items()):
            if not isinstance(entry, dict):
                del table[key]
                problems.append(f"[secrets.{key}] must say where the secret is, e.g. {key} = {{ env = \"VAR\" }} "
                                "or { prefect_secret = \"block-name\" }, not hold it (the value is not shown)")
    for key, value in list(data.items()):
        where = f"{prefix}{key}"
        if isinstance(value, dict) and where != "secrets":
            data[key] = dict(value)
            problems += _pasted_secrets(data[key], f"{where}.")
        elif key.endswith("_secret") and value not in (None, "") and not (
                isinstance(value, str) and SECRET_NAME_RE.match(value)):
            del data[key]
            problems.append(f"[{where}] must be the NAME of a [secrets] entry (letters, digits, _ . -), not the "
                            "secret itself (the value is not shown); put the value into an environment variable "
                            "and add NAME = { env = \"VAR\" } to [secrets]")
    return problems


def _hostile_strings(node: Any, where: str = "") -> list[str]:
    """Problems for strings with control or bidi characters or over :data:`MAX_STRING` long; they are
    cleaned in place (nested tables and lists copied first), so validation goes on and lists every
    other problem too. The value is never shown."""
    problems = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        at = f"{where}.{key}" if where else str(key)
        if isinstance(value, (dict, list)):
            node[key] = value = dict(value) if isinstance(value, dict) else list(value)
            problems += _hostile_strings(value, at)
        elif isinstance(value, str):
            hostile = _HOSTILE_RE.search(value)
            if hostile:
                problems.append(f"[{at}] contains a control character (U+{ord(hostile.group()):04X}); control and "
                                "bidi characters hide what a text says: remove them")
                value = node[key] = _HOSTILE_RE.sub("", value)
            if len(value) > MAX_STRING:
                problems.append(f"[{at}] is {len(value)} characters long; at most {MAX_STRING}")
                node[key] = value[:MAX_STRING]
    return problems


def load_config_and_secrets(path: str | os.PathLike, *, prefect_reader=None
                            ) -> tuple[Config | None, dict[str, SecretStr], list[str]]:
    """The config, its resolved secrets and every problem of both, found in one pass: a file with
    schema problems still has its ``[secrets]`` entries resolved, so nobody fixes it twice.
    The config is None when it does not validate; the problems are one line each, no value shown."""
    source = str(path)
    raw = read_toml(path, missing=_MISSING_FILE)
    config, problems = None, []
    try:
        config = config_from_dict(raw, source=source)
    except ConfigError as exc:
        problems += exc.problems
    refs = config.secrets if config is not None else _readable_refs(raw.get("secrets"))
    values, secret_problems = _resolve_refs(refs, prefect_reader)
    return config, values, problems + secret_problems


def _readable_refs(table: Any) -> dict[str, SecretRef]:
    """The ``[secrets]`` entries that are well-formed (the others are schema problems already)."""
    refs = {}
    for key, entry in (table or {}).items() if isinstance(table, dict) else ():
        try:
            refs[key] = SecretRef.model_validate(entry)
        except ValidationError:
            continue
    return refs


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_secrets(config: Config, *, prefect_reader=None) -> dict[str, SecretStr]:
    """Resolve every secret reference; raise :class:`ConfigError` naming each one missing.

    ``prefect_reader(name) -> str`` reads a Prefect Secret block (passed in by the flows so this
    module stays usable without a Prefect server).
    """
    values, problems = _resolve_refs(config.secrets, prefect_reader)
    if problems:
        raise ConfigError(config.source, problems)
    return values


def resolve_secret(key: str, ref: SecretRef, prefect_reader=None) -> tuple[SecretStr | None, str | None]:
    """One ``[secrets]`` entry: (its value, None) or (None, the problem in one line, no value shown).
    Without ``prefect_reader`` a Prefect Secret block counts as not set."""
    value: str | None = None
    if ref.env:
        value = os.environ.get(ref.env)
    elif prefect_reader is not None:
        try:
            value = prefect_reader(ref.prefect_secret)
        except Exception as exc:  # noqa: BLE001 — a missing block raises ValueError; report, don't crash
            return None, (f"[secrets.{key}] cannot read {ref.describe()} ({type(exc).__name__}); create the "
                          f"block (prefect block create secret) or check PREFECT_API_URL")
    if not value:
        where = f"export {ref.env}=..." if ref.env else "give the block a value"
        return None, f"[secrets.{key}] {ref.describe()} is not set; {where} before starting"
    register_secret(value)
    return SecretStr(value), None


def _resolve_refs(refs: dict[str, SecretRef], prefect_reader) -> tuple[dict[str, SecretStr], list[str]]:
    values, problems = {}, []
    for key, ref in refs.items():
        value, problem = resolve_secret(key, ref, prefect_reader)
        if problem:
            problems.append(problem)
        elif value is not None:
            values[key] = value
    return values, problems


Mode = Literal["rehearsal", "cutover"]


def journal_chain_key(config: Config, secrets: dict[str, SecretStr] | None = None, *,
                      prefect_reader=None) -> bytes | None:
    """The key of the journal's hash chain (``[journal] chain_key_secret``), None when unset.

    ``secrets`` are a run's resolved secrets; without them only this entry is resolved, so an
    auditor's ``cloud2box journal verify --config`` needs no other secret.
    """
    return _key_secret(config, "[journal] chain_key_secret", config.journal.chain_key_secret, "journal_key",
                       secrets, prefect_reader)


def sign_code_key(config: Config, secrets: dict[str, SecretStr] | None = None) -> bytes | None:
    """The key of the one-time codes' hashes (``[signoff] code_key_secret``), None when unset (then
    each process has its own, and a run waiting for a code holds its process: journal/signers.py)."""
    key = _key_secret(config, "[signoff] code_key_secret", config.signoff.code_key_secret, "sign_code_key", secrets)
    if key is not None and len(key) < 32:
        raise ConfigError(config.source, ["[signoff] code_key_secret: the key is shorter than 32 characters (its value "
                                          "is not shown); use a random one, e.g. python -c \"import secrets; "
                                          "print(secrets.token_urlsafe(32))\""])
    return key


def _key_secret(config: Config, setting: str, name: str, example: str, secrets: dict[str, SecretStr] | None,
                prefect_reader=None) -> bytes | None:
    if not name:
        return None
    if name not in config.secrets:
        # the value is not echoed: a key pasted here instead of a name would be shown otherwise
        raise ConfigError(config.source, [f"{setting} does not name an entry of [secrets] (its value is not shown); "
                                          f"name one, e.g. {example} = {{ env = \"C2B_{example.upper()}\" }} and "
                                          f"{setting.split()[-1]} = \"{example}\""])
    value = (secrets or {}).get(name)
    if value is None:
        value, problem = resolve_secret(name, config.secrets[name], prefect_reader)
        if problem:
            raise ConfigError(config.source, [problem])
    return value.get_secret_value().encode("utf-8")
