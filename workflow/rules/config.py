"""The TOML configuration of docs/reference.md, loaded into validated models.

Two passes: pydantic checks each table's shape (unknown keys, types, formats), then
``cross_check`` checks references between tables (an org's plan exists, a plan's
calendar exists...). Every problem is reported with its key path, e.g.
``orgs[0].plan: unknown plan 'gold'``, and all problems are reported at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from postdesk.workflow.rules.calendar import WEEKDAYS, parse_day_hours
from postdesk.workflow.rules.durations import Duration, DurationError, parse_duration
from postdesk.workflow.rules.errors import UserError
from postdesk.workflow.rules.priority import PRIORITIES

TARGETS = ("first_response", "next_update", "resolution")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ConfigError(UserError):
    """The configuration cannot be used; ``problems`` lists each one with its key path."""

    def __init__(self, problems: list[str], source: str = ""):
        self.problems = problems
        self.source = source
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _duration_or_off(value: Any) -> Duration:
    """A duration where ``0`` (or ``"0"``) means "off"."""
    if value in (0, "0"):
        return Duration()
    return _duration(value)


def _email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise ValueError(f"not an email address: {value!r}")
    return value.lower()


class DeskConfig(_Strict):
    name: str = "postdesk"
    support_addresses: list[str] = Field(min_length=1)
    ticket_prefix: str = "PD"
    database_url: str = "sqlite:///postdesk.db"
    broker_url: str = "stub://"
    data_dir: str = "./data"
    # Extensions to docs/reference.md (listed in README "Configuration"):
    secret: str | None = None          # HMAC key for Message-IDs and reply tokens
    database_lock_timeout: Duration = Field(default_factory=lambda: Duration(seconds=30))
    # How long a sender owns an email it is sending. A process killed mid-send leaves the
    # email claimed this long before another may try: longer than any SMTP dialogue, so a
    # slow send is never doubled by an impatient retry.
    send_claim: Duration = Field(default_factory=lambda: Duration(seconds=300))
    worker_threads: int = Field(default=4, ge=1, le=64)
    queue_namespace: str = "postdesk"  # prefix for broker queues (Redis namespace / AMQP names)
    worker_prefetch: int = Field(default=32, ge=1, le=1024)
    auto_reply_limit_per_hour: int = Field(default=5, ge=0)
    flood_tickets_per_hour: int = Field(default=30, ge=1)
    close_after_days: int = Field(default=7, ge=1)
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    # A raw email up to this size is kept in its raw_messages row: accepting it is one
    # durable commit and no file (three fsyncs fewer than a blob); larger ones go to the
    # blob store under data_dir. 0 keeps every raw email as a file.
    raw_in_database_bytes: int = Field(default=256 * 1024, ge=0)
    # Mail servers whose Authentication-Results headers we believe (our own MX).
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # Staff commands only from DKIM-verified staff mail (set when the staff domain signs).
    staff_require_dkim: bool = False
    # A staff email without a ticket token may open a ticket on a client's behalf only
    # when DKIM-verified; where staff mail cannot be verified at all, an operator may
    # accept an exact envelope instead by turning this on (off: refused).
    staff_unverified_on_behalf: bool = False
    hard_bounce_limit: int = Field(default=3, ge=1)
    # Words in a client's reply that sign off work awaiting approval (None: built-in list).
    approval_phrases: list[str] | None = None
    # Client attachments copied onto a staff notification, and a staff reply's onto the
    # client's email, up to this many bytes in total (beyond: listed, or refused).
    notify_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=0)

    _lock = field_validator("database_lock_timeout", "send_claim", mode="before")(_duration)

    @field_validator("support_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        return [_email(v) for v in value]

    @field_validator("ticket_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z][A-Z0-9]{0,9}", value):
            raise ValueError(f"ticket_prefix must be 1-10 capital letters/digits, got {value!r}")
        return value


class SmtpInConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    max_message_bytes: int = Field(default=26214400, ge=1024)
    # Limits of the door (ingest/smtp.py): sessions beyond max_sessions get 421,
    # recipients beyond max_recipients 452 (RFC 5321 4.5.3.1.8: at least 100).
    max_sessions: int = Field(default=100, ge=1)
    max_recipients: int = Field(default=100, ge=100)
    idle_timeout: Duration = Field(default_factory=lambda: Duration(seconds=300))
    data_timeout: Duration = Field(default_factory=lambda: Duration(seconds=600))
    # STARTTLS with this certificate and key (PEM files); require_starttls: 530 to any
    # MAIL FROM before it.
    tls_cert: str | None = None
    tls_key: str | None = None
    require_starttls: bool = False
    # SMTP AUTH (over TLS only) for deployments that submit rather than relay from an MX.
    auth_required: bool = False
    auth_username_env: str | None = None
    auth_password_env: str | None = None

    _d = field_validator("idle_timeout", "data_timeout", mode="before")(_duration)


def smtp_in_problems(cfg: SmtpInConfig) -> list[str]:
    problems = []
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        problems.append("smtp_in.tls_key: tls_cert and tls_key go together")
    if cfg.require_starttls and not cfg.tls_cert:
        problems.append("smtp_in.require_starttls: needs tls_cert and tls_key")
    if (cfg.auth_username_env or cfg.auth_required) and not (
            cfg.auth_username_env and cfg.auth_password_env):
        problems.append("smtp_in.auth_password_env: AUTH needs auth_username_env and "
                        "auth_password_env")
    if cfg.auth_required and not cfg.tls_cert:
        problems.append("smtp_in.auth_required: AUTH is only offered over TLS: set tls_cert")
    return problems


class ImapConfig(_Strict):
    name: str
    host: str
    port: int = Field(default=993, ge=1, le=65535)
    ssl: bool = True
    starttls: bool = False
    username: str
    password_env: str | None = None
    oauth2_token_command: str | None = None
    folder: str = "INBOX"
    processed_folder: str | None = "Processed"
    poll_interval: Duration = Field(default_factory=lambda: Duration(seconds=60))
    idle_timeout: Duration = Field(default_factory=lambda: Duration(seconds=25 * 60))
    batch_size: int = Field(default=200, ge=1, le=5000)

    _d = field_validator("poll_interval", "idle_timeout", mode="before")(_duration)


class SmtpOutConfig(_Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    ssl: bool = False
    username: str | None = None
    password_env: str | None = None
    from_address: str
    timeout: float = 30.0

    _e = field_validator("from_address")(_email)


class CalendarConfig(_Strict):
    timezone: str = "UTC"
    hours: dict[str, str] = Field(default_factory=dict)
    holidays: dict[str, str] | None = None
    closed: list[date] = Field(default_factory=list)
    always_open: bool = False

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, str]) -> dict[str, str]:
        for day, spec in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r} (use {', '.join(WEEKDAYS)})")
            # The calendar's own parser: what passes here, the calendar accepts.
            parse_day_hours(day, spec, where=day)
        return value

    @field_validator("holidays")
    @classmethod
    def _holidays(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            unknown = set(value) - {"country", "subdiv"}
            if unknown:
                raise ValueError(f"unknown key(s) {sorted(unknown)} (use country, subdiv)")
            if "country" not in value:
                raise ValueError("holidays needs a country, e.g. { country = \"GB\" }")
        return value


def _targets(value: dict[str, Any]) -> dict[str, Duration]:
    out: dict[str, Duration] = {}
    for prio, text in value.items():
        if prio not in PRIORITIES:
            raise ValueError(f"unknown priority {prio!r} (use P1, P2, P3)")
        out[prio] = _duration(text)
    return out


class PlanConfig(_Strict):
    calendar: str
    priority_calendar: dict[str, str] = Field(default_factory=dict)
    first_response: dict[str, Duration] = Field(default_factory=dict)
    next_update: dict[str, Duration] = Field(default_factory=dict)
    resolution: dict[str, Duration] = Field(default_factory=dict)
    monthly_allowance: Duration = Field(default_factory=Duration)
    rollover_cap: Duration | None = None
    # A ticket pending this long gets one reminder to the requester, and is resolved after
    # ``pending_close_after`` (business time on the plan's calendar; 0 = off).
    pending_remind_after: Duration = Field(default_factory=lambda: Duration(days=3))
    pending_close_after: Duration = Field(default_factory=lambda: Duration(days=10))

    _t = field_validator("first_response", "next_update", "resolution", mode="before")(_targets)
    _d = field_validator("monthly_allowance", "rollover_cap", mode="before")(_duration)
    _off = field_validator("pending_remind_after", "pending_close_after",
                           mode="before")(_duration_or_off)

    @field_validator("priority_calendar")
    @classmethod
    def _prio(cls, value: dict[str, str]) -> dict[str, str]:
        for prio in value:
            if prio not in PRIORITIES:
                raise ValueError(f"unknown priority {prio!r} (use P1, P2, P3)")
        return value

    def target(self, kind: str, priority: str) -> Duration | None:
        targets: dict[str, Duration] = getattr(self, kind)
        return targets.get(priority)

    def calendar_for(self, priority: str) -> str:
        return self.priority_calendar.get(priority, self.calendar)


class ContactConfig(_Strict):
    email: str
    name: str = ""
    can_approve: bool = False

    _e = field_validator("email")(_email)


class OrgConfig(_Strict):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str
    plan: str
    domains: list[str] = Field(default_factory=list)
    require_dkim: bool = False
    escalation_keyword: str | None = None
    contacts: list[ContactConfig] = Field(default_factory=list)
    timezone: str | None = None  # for allowance months; defaults to the plan calendar's zone
    statement: bool = False      # a monthly statement on the first open day of the month
    statement_to: list[str] = Field(default_factory=list)  # else contacts with can_approve

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower().lstrip("@") for d in value]


class StaffConfig(_Strict):
    email: str
    name: str = ""
    role: Literal["agent", "lead", "manager"] = "agent"
    timezone: str | None = None   # the zone due times are shown in (default: the desk's)

    _e = field_validator("email")(_email)


class RotaConfig(_Strict):
    start: date
    weeks: list[str] = Field(min_length=1)

    @field_validator("weeks")
    @classmethod
    def _weeks(cls, value: list[str]) -> list[str]:
        return [_email(v) for v in value]


class DigestConfig(_Strict):
    managers: list[str] = Field(default_factory=list)
    at: str = Field(default="08:30", pattern=r"^\d{2}:\d{2}$")
    timezone: str = "UTC"
    period: Literal["daily", "weekly"] = "daily"
    waiting_days: int = Field(default=3, ge=1)  # digest lists tickets pending longer
    # The days digests go out on (a [calendars] name); default Monday-Friday in `timezone`.
    calendar: str | None = None

    @field_validator("managers")
    @classmethod
    def _managers(cls, value: list[str]) -> list[str]:
        return [_email(v) for v in value]


class SchedulerConfig(_Strict):
    scan_interval: Duration = Field(default_factory=lambda: Duration(seconds=60))
    at_risk: float = Field(default=0.75, gt=0, lt=1)
    sweep_grace: Duration = Field(default_factory=lambda: Duration(seconds=120))
    # One scheduler at a time: the holder renews its lease every third of this; a spare
    # takes over at most one period (plus a third) after the holder dies.
    lease_period: Duration = Field(default_factory=lambda: Duration(seconds=15))

    _d = field_validator("scan_interval", "sweep_grace", "lease_period",
                         mode="before")(_duration)


class MetricsConfig(_Strict):
    """Prometheus metrics over HTTP (docs/metrics.md); off until a port is set."""

    host: str = Field(default="127.0.0.1", description="address the /metrics endpoint listens on")
    port: int | None = Field(default=None, ge=0, le=65535,
                             description="port of the /metrics endpoint; unset: no endpoint")


class PriorityRuleConfig(_Strict):
    phrase: str = Field(min_length=2)
    priority: Literal["P1", "P2", "P3"]


class Config(_Strict):
    desk: DeskConfig
    smtp_in: SmtpInConfig = Field(default_factory=SmtpInConfig)
    imap: list[ImapConfig] = Field(default_factory=list)
    smtp_out: SmtpOutConfig | None = None
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)
    plans: dict[str, PlanConfig] = Field(default_factory=dict)
    orgs: list[OrgConfig] = Field(default_factory=list)
    staff: list[StaffConfig] = Field(default_factory=list)
    rota: RotaConfig | None = None
    digest: DigestConfig = Field(default_factory=DigestConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    priority_rules: list[PriorityRuleConfig] | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    # --- derived look-ups -------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.desk.data_dir)

    @property
    def support_domain(self) -> str:
        return self.desk.support_addresses[0].split("@", 1)[1]

    def org(self, slug: str) -> OrgConfig | None:
        return next((o for o in self.orgs if o.slug == slug), None)

    def staff_member(self, email: str) -> StaffConfig | None:
        email = email.lower()
        return next((s for s in self.staff if s.email == email), None)

    def leads(self) -> list[StaffConfig]:
        return [s for s in self.staff if s.role == "lead"]


# --- loading ------------------------------------------------------------------------------

ENV_OVERRIDES = {
    "POSTDESK_DATABASE_URL": ("desk", "database_url"),
    "POSTDESK_BROKER_URL": ("desk", "broker_url"),
    "POSTDESK_DATA_DIR": ("desk", "data_dir"),
    "POSTDESK_SECRET": ("desk", "secret"),
}


def find_config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("POSTDESK_CONFIG"):
        return Path(os.environ["POSTDESK_CONFIG"])
    return Path("postdesk.toml")


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{_loc(loc)}: {msg}")
    return problems


def cross_check(cfg: Config) -> list[str]:
    """Problems that span tables: references by name, duplicates, time zones."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    problems: list[str] = []

    def check_zone(path: str, name: str) -> None:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{path}: unknown time zone {name!r}")

    for name, cal in cfg.calendars.items():
        check_zone(f"calendars.{name}.timezone", cal.timezone)
        if not cal.always_open and not cal.hours:
            problems.append(f"calendars.{name}.hours: no opening hours (or set always_open)")
        if cal.holidays:
            import holidays as holidays_lib

            try:
                holidays_lib.country_holidays(
                    cal.holidays["country"], subdiv=cal.holidays.get("subdiv"), years=2026
                )
            except NotImplementedError:
                problems.append(
                    f"calendars.{name}.holidays: unknown country {cal.holidays['country']!r}"
                )
            except Exception as exc:  # holidays raises assorted errors for bad subdivs
                problems.append(f"calendars.{name}.holidays: {exc}")
    for name, plan in cfg.plans.items():
        if plan.calendar not in cfg.calendars:
            problems.append(f"plans.{name}.calendar: unknown calendar {plan.calendar!r}")
        for prio, cal_name in plan.priority_calendar.items():
            if cal_name not in cfg.calendars:
                problems.append(
                    f"plans.{name}.priority_calendar.{prio}: unknown calendar {cal_name!r}")
    seen_slugs: set[str] = set()
    claimed: dict[str, str] = {}
    for i, org in enumerate(cfg.orgs):
        if org.plan not in cfg.plans:
            problems.append(f"orgs[{i}].plan: unknown plan {org.plan!r}")
        if org.slug in seen_slugs:
            problems.append(f"orgs[{i}].slug: duplicate org {org.slug!r}")
        seen_slugs.add(org.slug)
        for domain in org.domains:
            if domain in claimed:
                problems.append(
                    f"orgs[{i}].domains: {domain!r} is already claimed by org {claimed[domain]!r}"
                )
            claimed[domain] = org.slug
        if org.timezone:
            check_zone(f"orgs[{i}].timezone", org.timezone)
    staff_emails = {s.email for s in cfg.staff}
    for i, s in enumerate(cfg.staff):
        if s.email in cfg.desk.support_addresses:
            problems.append(f"staff[{i}].email: a support address cannot be staff")
        if s.timezone:
            check_zone(f"staff[{i}].timezone", s.timezone)
    if cfg.rota:
        if cfg.rota.start.weekday() != 0:
            problems.append(f"rota.start: {cfg.rota.start} is not a Monday")
        for i, email in enumerate(cfg.rota.weeks):
            if email not in staff_emails:
                problems.append(f"rota.weeks[{i}]: {email!r} is not listed in [[staff]]")
    check_zone("digest.timezone", cfg.digest.timezone)
    if cfg.digest.calendar is not None and cfg.digest.calendar not in cfg.calendars:
        problems.append(f"digest.calendar: unknown calendar {cfg.digest.calendar!r}")
    for i, box in enumerate(cfg.imap):
        if not box.password_env and not box.oauth2_token_command:
            problems.append(f"imap[{i}].password_env: set password_env or oauth2_token_command")
    problems += smtp_in_problems(cfg.smtp_in)
    names = [b.name for b in cfg.imap]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(f"imap[{i}].name: duplicate mailbox name {name!r}")
    return problems


def _cross_check_pruned(data: dict[str, Any], exc: ValidationError) -> list[str]:
    """``cross_check`` of ``data`` without the keys ``exc`` complained about (their
    defaults apply), or nothing when what remains is still not a valid config."""
    import copy

    pruned = copy.deepcopy(data)
    for _ in range(3):
        for err in exc.errors():
            loc = [p for p in err["loc"]
                   if not (isinstance(p, str) and p.startswith("function-"))]
            if err["type"] == "missing" or not loc or not isinstance(loc[-1], str):
                return []
            parent: Any = pruned
            try:
                for part in loc[:-1]:
                    parent = parent[part]
                del parent[loc[-1]]
            except (KeyError, IndexError, TypeError):
                return []
        try:
            return cross_check(Config.model_validate(pruned))
        except ValidationError as again:
            exc = again
    return []


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for var, (table, key) in ENV_OVERRIDES.items():
        if environ.get(var):
            data.setdefault(table, {})[key] = environ[var]
    return data


def parse_config(text: str, *, source: str = "<config>",
                 environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"], source) from None
    data = apply_env(data, environ)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = _pydantic_problems(exc)
        # Report every problem in one pass: the cross-table checks too, on what is left
        # once the keys already reported are set aside.
        # A key set aside is not reported again under its own path ("no opening hours"
        # for hours that were refused).
        reported = tuple(p.split(":", 1)[0] for p in problems)
        problems += [p for p in _cross_check_pruned(data, exc)
                     if not p.split(":", 1)[0].startswith(reported)]
        raise ConfigError(problems, source) from None
    problems = cross_check(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path | None = None) -> Config:
    file = find_config_path(str(path) if path else None)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"{file}: config file not found (run `postdesk init`, or pass --config)"], str(file)
        ) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"], str(file)) from None
    cfg = parse_config(text, source=str(file))
    # Relative paths in the file are relative to the file, so `--config /etc/x.toml` works
    # from any working directory.
    return resolve_paths(cfg, file.parent)


def resolve_paths(cfg: Config, base: Path) -> Config:
    desk = cfg.desk
    updates: dict[str, Any] = {}
    if not Path(desk.data_dir).is_absolute():
        updates["data_dir"] = str((base / desk.data_dir).resolve())
    url = desk.database_url
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        rel = url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            updates["database_url"] = "sqlite:///" + str((base / rel).resolve())
    door = {key: str((base / value).resolve()) for key in ("tls_cert", "tls_key")
            if (value := getattr(cfg.smtp_in, key)) and not Path(value).is_absolute()}
    if door:
        cfg = cfg.model_copy(update={"smtp_in": cfg.smtp_in.model_copy(update=door)})
    if not updates:
        return cfg
    return cfg.model_copy(update={"desk": desk.model_copy(update=updates)})


def secret_from_env(var: str | None) -> str | None:
    """Secrets are named by environment variable in the file, never written in it."""
    return os.environ.get(var) if var else None
