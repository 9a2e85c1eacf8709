"""Typed models of the YAML configuration in this directory.

One file per concern (``channels.yaml``, ``pipelines.yaml``, ``sources.yaml``,
``users.yaml``, ``calendar.yaml``, ``automation.yaml``); :func:`config.loader.load_config`
reads them all into one :class:`AppConfig` and checks the references between them. The
rule language of ``automation.yaml`` is modelled in :mod:`automation.rules`.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from automation.rules import AutomationFile, Condition

Ident = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]*$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- channels.yaml -------------------------------------------------------------------


class ChannelAccount(Strict):
    """One account of one channel: a site form, a bot, a mailbox, a PBX line.

    Secrets are never written here: ``secret_env`` names the environment variable that
    holds the secret (HMAC key, bot token, mailbox password).
    """

    channel: Ident
    account: Ident
    source: Ident
    secret_env: EnvName | None = None
    enabled: bool = True
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Where this account's webhooks may come from (CIDR list; empty: anywhere). The remedy
    # for providers whose authenticity is weak or static (docs/security.md); the client
    # address is the connection's, or X-Forwarded-For's when the connection comes from a
    # proxy in OMNIROUTE_TRUSTED_PROXIES.
    allowed_networks: list[str] = Field(default_factory=list)
    # E-mail: senders that are customers even when they look automatic (a site form that
    # mails from noreply@ with the customer in Reply-To). Exact addresses or patterns
    # with * (``*@forms.example.ru``).
    customer_senders: list[str] = Field(default_factory=list)
    # Provider-specific settings (IMAP host, bot base URL ...); each channel module
    # validates its own part.
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    # WhatsApp: the approved message templates (mappings: name, language, category,
    # params, text; modelled and checked by channels/whatsapp_templates.py).
    templates: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # ValueError: not a CIDR
        return value


# Comments under posts (VK, Facebook, Instagram): ``settings.comments``. "lead": a comment
# from an unknown commenter creates a lead like a message; "attach": it only joins a known
# contact's conversation, lead or deal (docs/channels/comments.md).
CommentsMode = Literal["lead", "attach"]
COMMENTS_MODES: tuple[CommentsMode, ...] = ("lead", "attach")


def comments_mode(account: ChannelAccount | None) -> CommentsMode:
    """The account's ``comments`` setting; "lead" when unset (check-config refuses any
    other value)."""
    value = account.settings.get("comments") if account is not None else None
    return "attach" if value == "attach" else "lead"


class ChannelsFile(Strict):
    accounts: list[ChannelAccount] = Field(default_factory=list)


# --- pipelines.yaml ------------------------------------------------------------------


class PipelineKind(StrEnum):
    LEAD = "lead"
    DEAL = "deal"


class StageOutcome(StrEnum):
    OPEN = "open"
    WON = "won"
    FAILED = "failed"


class EntryRequirement(Strict):
    """A condition a lead/deal must meet to enter a stage, and what to say when it does
    not ("payment is complete")."""

    message: str = Field(min_length=1, max_length=200)
    if_: Condition = Field(alias="if")


class RequiredDocument(Strict):
    """A document of a type the deal must have, in ``status`` or later, to enter a stage
    (generated < sent < signed)."""

    type: Ident
    status: Literal["generated", "sent", "signed"] = "signed"


class Stage(Strict):
    id: Ident
    name: str
    outcome: StageOutcome = StageOutcome.OPEN
    # A failed stage that marks the sender as spam: later messages from the contact are
    # stored but create no lead.
    spam: bool = False
    # Fields that must be filled before a lead/deal may enter this stage.
    required_fields: list[Ident] = Field(default_factory=list)
    # Conditions on the fields to enter this stage (conditional entry).
    requires: list[EntryRequirement] = Field(default_factory=list)
    # Once a lead/deal has reached this stage, it may not move back before it.
    no_return: bool = False
    # Documents (config/templates/) the deal must have, each in at least a status, to
    # enter this stage (docs/documents.md).
    requires_documents: list[RequiredDocument] = Field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.outcome is not StageOutcome.OPEN


class SurveyQuestion(Strict):
    """One 1–5 question of a quality survey, in both languages of the survey page."""

    key: Ident
    ru: str = Field(min_length=1, max_length=300)
    en: str = Field(min_length=1, max_length=300)


class SurveyThresholds(Strict):
    """Where an answered survey moves its deal: every answer ``top`` → ``all_top_stage``,
    anything less → ``otherwise_stage`` (None: the deal stays)."""

    top: int = Field(default=5, ge=1, le=5)
    all_top_stage: Ident | None = None
    otherwise_stage: Ident | None = None


class Survey(Strict):
    """A quality survey of a pipeline's deals (docs/survey.md): ``send_survey`` gives the
    customer a signed, expiring link to its page, one per deal."""

    id: Ident
    title_ru: str = Field(default="Оцените нашу работу", max_length=200)
    title_en: str = Field(default="Rate our work", max_length=200)
    questions: list[SurveyQuestion] = Field(min_length=1, max_length=20)
    comment: bool = True
    link_ttl_days: int = Field(default=30, ge=1, le=365)
    # Where customers reach the service: the link is ``{base_url}/survey/{token}``.
    base_url: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=300)
    # The message carrying the link; ``{survey.link}`` and automation's placeholders.
    text: str = Field(min_length=1, max_length=1000)
    thresholds: SurveyThresholds = Field(default_factory=SurveyThresholds)


class Pipeline(Strict):
    id: Ident
    kind: PipelineKind
    # sales: its open deals attract the customer's messages (routing's "active deal");
    # service: after-sale work (an NPS survey, a warranty claim) that never does.
    purpose: Literal["sales", "service"] = "sales"
    name: str
    stages: list[Stage] = Field(min_length=1)
    # Forbid moving back to an earlier open stage.
    forbid_backward: bool = False
    # Quality surveys of this pipeline's deals (docs/survey.md).
    surveys: list[Survey] = Field(default_factory=list)

    def survey(self, survey_id: str) -> Survey | None:
        return next((s for s in self.surveys if s.id == survey_id), None)

    # A new responsible of a deal becomes its contact's and company's too (the forensic
    # bureau; automation/worker.py follows deal.responsible_changed).
    cascade_responsible: bool = False

    def stage(self, stage_id: str) -> Stage | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    @property
    def first_stage(self) -> Stage:
        return next(s for s in self.stages if not s.final)


class PipelinesFile(Strict):
    pipelines: list[Pipeline] = Field(min_length=1)


# --- sources.yaml --------------------------------------------------------------------


class SourceMode(StrEnum):
    LEADS = "leads"
    # "No leads" mode: an unknown sender becomes a contact + a deal directly.
    NO_LEADS = "no_leads"


class Source(Strict):
    """Where messages come from (a site, a mailbox, a line) and where they are routed."""

    id: Ident
    name: str
    mode: SourceMode = SourceMode.LEADS
    # Pipeline for new leads (mode leads) or new deals (mode no_leads).
    pipeline: Ident
    # Stage to open in; default the pipeline's first open stage.
    stage: Ident | None = None
    # Line whose users share new leads round-robin.
    line: Ident | None = None
    # Fixed responsible user for new leads from this source (overrides the line).
    responsible: Ident | None = None


class SourcesFile(Strict):
    sources: list[Source] = Field(min_length=1)


# --- users.yaml ----------------------------------------------------------------------


class Role(StrEnum):
    MANAGER = "manager"
    DIRECTOR = "director"
    ADMIN = "admin"
    NO_ACCESS = "no_access"


class Department(Strict):
    id: Ident
    name: str
    parent: Ident | None = None
    head: Ident | None = None
    # The department's agent: set as ``agent_id`` and a watcher on every deal whose
    # responsible works here (the forensic bureau's "agents"; automation/worker.py).
    agent: Ident | None = None


class User(Strict):
    id: Ident
    name: str
    role: Role
    department: Ident
    lines: list[Ident] = Field(default_factory=list)
    email: str | None = None
    active: bool = True


class Absence(Strict):
    """A user away from ``from`` to ``to`` (dates are whole local days, ``to`` included;
    date-times are moments): assignment, round robin and notifications reach ``deputy``
    instead (docs/configuration.md "Absences"). ``id``: set on absences stored by the API."""

    user: Ident
    from_: date | datetime = Field(alias="from")
    to: date | datetime
    deputy: Ident | None = None
    id: str | None = None

    def window(self, tz: tzinfo) -> tuple[datetime, datetime]:
        """[start, end) as aware moments in ``tz`` (the calendar's zone)."""

        def moment(value: date | datetime, next_day: bool) -> datetime:
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=tz)
            day = value + timedelta(days=1) if next_day else value
            return datetime.combine(day, time(0, 0), tzinfo=tz)

        return moment(self.from_, False), moment(self.to, True)


class UsersFile(Strict):
    departments: list[Department] = Field(default_factory=list)
    users: list[User] = Field(default_factory=list)
    # The file's absences, and (in place, crm_store/users.Directory) the API's.
    absences: list[Absence] = Field(default_factory=list)


# --- calendar.yaml -------------------------------------------------------------------


class WorkingHours(Strict):
    start: time = time(9, 0)
    end: time = time(18, 0)


class CalendarFile(Strict):
    timezone: str = "Europe/Moscow"
    country: Literal["RU"] = "RU"
    working_hours: WorkingHours = WorkingHours()


# --- templates/templates.yaml (optional; docs/documents.md) --------------------------


class DocumentTemplate(Strict):
    """One document type: its DOCX file under ``templates/`` and its number format
    (``{year}``, ``{n}`` — e.g. ``"Д-{year}-{n:04d}"``)."""

    type: Ident
    title: str = Field(min_length=1, max_length=200)
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+\.docx$")
    number_format: str = Field(default="{year}-{n:04d}", min_length=1, max_length=100)
    version: int = Field(default=1, ge=1)
    # A deal field set to true when the signed scan is uploaded (``contract_signed``):
    # what stage entry conditions and automation rules can test.
    signed_field: Ident | None = None


class TemplatesFile(Strict):
    templates: list[DocumentTemplate] = Field(default_factory=list)
    # Where the files are: set by the loader (the configuration's templates/ directory).
    dir: str | None = None

    def get(self, doc_type: str) -> DocumentTemplate | None:
        return next((t for t in self.templates if t.type == doc_type), None)


# --- the whole configuration ---------------------------------------------------------


class AppConfig(Strict):
    channels: ChannelsFile
    pipelines: PipelinesFile
    sources: SourcesFile
    users: UsersFile
    calendar: CalendarFile
    automation: AutomationFile = AutomationFile()
    templates: TemplatesFile = TemplatesFile()

    def account(self, channel: str, account: str) -> ChannelAccount | None:
        return next(
            (
                a
                for a in self.channels.accounts
                if a.channel == channel and a.account == account and a.enabled
            ),
            None,
        )

    def source(self, source_id: str) -> Source:
        return next(s for s in self.sources.sources if s.id == source_id)

    def pipeline(self, pipeline_id: str) -> Pipeline:
        return next(p for p in self.pipelines.pipelines if p.id == pipeline_id)

    def line_users(self, line: str, at: datetime | None = None) -> list[User]:
        """The line's active users not absent at ``at`` (default: now)."""
        at = at or datetime.now(UTC)
        return [
            u
            for u in self.users.users
            if u.active and line in u.lines and self.absence(u.id, at) is None
        ]

    def absence(self, user_id: str, at: datetime) -> Absence | None:
        """The absence of ``user_id`` going on at ``at``, if any."""
        tz = ZoneInfo(self.calendar.timezone)
        for a in self.users.absences:
            if a.user == user_id:
                start, end = a.window(tz)
                if start <= at < end:
                    return a
        return None

    def stand_in(self, user_id: str, at: datetime) -> str:
        """Who does ``user_id``'s work at ``at``: themself, or while they are absent their
        deputy (the deputy's deputy if that one is away too, at most 5 steps); an absence
        without a present deputy leaves the user themself."""
        current, seen = user_id, {user_id}
        for _ in range(5):
            away = self.absence(current, at)
            if away is None:
                return current
            deputy = self.user(away.deputy) if away.deputy else None
            if deputy is None or not deputy.active or deputy.id in seen:
                return user_id
            current = deputy.id
            seen.add(current)
        return user_id

    def user(self, user_id: str) -> User | None:
        return next((u for u in self.users.users if u.id == user_id), None)

    def department_subtree(self, department_id: str) -> set[str]:
        """The department and every department below it."""
        children: dict[str, list[str]] = {}
        for d in self.users.departments:
            if d.parent:
                children.setdefault(d.parent, []).append(d.id)
        found, todo = set(), [department_id]
        while todo:
            dept = todo.pop()
            if dept not in found:
                found.add(dept)
                todo.extend(children.get(dept, []))
        return found

    def service_pipelines(self) -> frozenset[str]:
        """Pipelines of ``purpose: service``: their deals never attract messages or calls."""
        return frozenset(p.id for p in self.pipelines.pipelines if p.purpose == "service")
