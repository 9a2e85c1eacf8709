"""WhatsApp message templates as an account configures them, and the checks a template
send passes before it leaves (pure: no I/O).

A template is approved by Meta in WhatsApp Manager; omniroute only knows what the
account's ``templates`` say of it (channels.yaml, next to ``settings``, which hold
scalars only)::

    - channel: whatsapp
      account: main
      templates:
        - name: order_ready            # the template's name in WhatsApp Manager
          language: ru                 # its language code (Meta: ru, en_US …)
          category: utility            # marketing | utility | authentication (optional)
          params: [order number, pick-up date]   # what {{1}}, {{2}} … mean, in order
          text: "Заказ {{1}} готов, забрать можно с {{2}}."   # the body, as approved

``text`` is the body as approved, its placeholders ``{{1}}`` … ``{{n}}`` exactly one per
parameter; the stored outbound message shows it rendered (:func:`render`). Meta's
approval state of each template is kept in the store (crm_store/wa_templates.py, from
``message_template_status_update`` webhooks).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from channels.base import SendError, TemplateRef
from config.models import ChannelAccount

PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
# Meta: a template parameter of type text is at most 1024 characters (and no newlines,
# tabs or more than four consecutive spaces; newlines are replaced by spaces here).
MAX_PARAM = 1024
MAX_PARAMS = 30


class TemplateSpec(BaseModel):
    """One template of the account's ``templates``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$", description="as in WhatsApp Manager")
    language: str = Field(default="ru", pattern=r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")
    category: Literal["marketing", "utility", "authentication"] | None = None
    params: list[str] = Field(default_factory=list, max_length=MAX_PARAMS)
    text: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _placeholders(self) -> TemplateSpec:
        found = sorted({int(n) for n in PLACEHOLDER.findall(self.text)})
        wanted = list(range(1, len(self.params) + 1))
        if found != wanted:
            shown = ", ".join(f"{{{{{n}}}}}" for n in found) or "none"
            raise ValueError(
                f"text must use the placeholders {{{{1}}}} … {{{{{len(self.params)}}}}} "
                f"once each, one per entry of params ({len(self.params)}); it uses {shown}"
                if self.params
                else f"text has placeholders ({shown}) but params is empty"
            )
        return self


TEMPLATES = TypeAdapter(list[TemplateSpec])


def parse_templates(value: Any) -> list[TemplateSpec]:
    """An account's ``templates`` as models; raises :class:`ValidationError` (check-config
    reports each error at its line)."""
    return TEMPLATES.validate_python(value if value is not None else [])


def templates_of(account: ChannelAccount) -> list[TemplateSpec]:
    """The account's templates; a malformed list (check-config reports it) counts as
    none, so a send names the template as unknown rather than failing obscurely."""
    try:
        return parse_templates(account.templates)
    except ValidationError:
        return []


def find(account: ChannelAccount, name: str, language: str | None = None) -> TemplateSpec | None:
    """The configured template ``name`` (in ``language``, else the first of that name)."""
    for spec in templates_of(account):
        if spec.name == name and (language is None or spec.language == language):
            return spec
    return None


def clean_param(value: str) -> str:
    """A parameter as Meta accepts it: no newlines or tabs (replaced by spaces)."""
    return " ".join(value.replace("\t", " ").splitlines()).strip()


def render(spec: TemplateSpec, params: list[str]) -> str:
    """The template's text with ``{{i}}`` replaced by the i-th parameter."""

    def one(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return params[i - 1] if 0 < i <= len(params) else m.group(0)

    return PLACEHOLDER.sub(one, spec.text)


def ref_of(spec: TemplateSpec, params: list[str]) -> TemplateRef:
    return TemplateRef(name=spec.name, language=spec.language, params=params)


def check(account: ChannelAccount, ref: TemplateRef) -> TemplateSpec:
    """The configured template a send names, or :class:`SendError` (not retryable) with
    the reason an operator understands: not configured on the account, the wrong number
    of parameters, an empty or over-long parameter."""
    spec = find(account, ref.name, ref.language)
    if spec is None:
        known = ", ".join(f"{s.name} ({s.language})" for s in templates_of(account)) or "none"
        raise SendError(
            f"template {ref.name!r} ({ref.language}) is not configured on WhatsApp account "
            f"{account.account!r} (its templates in channels.yaml; configured: {known})",
            retryable=False,
            code="template_unknown",
        )
    if len(ref.params) != len(spec.params):
        raise SendError(
            f"template {spec.name!r} takes {len(spec.params)} parameter(s) "
            f"({', '.join(spec.params) or 'none'}); {len(ref.params)} given",
            retryable=False,
            code="template_params",
        )
    for i, (value, what) in enumerate(zip(ref.params, spec.params, strict=True), start=1):
        if not value.strip():
            raise SendError(
                f"template {spec.name!r}: parameter {i} ({what}) is empty",
                retryable=False,
                code="template_params",
            )
        if len(value) > MAX_PARAM:
            raise SendError(
                f"template {spec.name!r}: parameter {i} ({what}) is over {MAX_PARAM} characters",
                retryable=False,
                code="template_params",
            )
    return spec


def payload(ref: TemplateRef) -> dict[str, Any]:
    """The Graph API ``template`` object of a send."""
    template: dict[str, Any] = {"name": ref.name, "language": {"code": ref.language}}
    if ref.params:
        template["components"] = [
            {
                "type": "body",
                "parameters": [{"type": "text", "text": clean_param(p)} for p in ref.params],
            }
        ]
    return template


def prepare(
    account: ChannelAccount, name: str, params: list[str], language: str | None = None
) -> tuple[TemplateRef, str]:
    """A template send ready to queue: its reference (checked: :func:`check`) and the
    rendered preview the stored message shows. :class:`SendError` if it may not go."""
    spec = find(account, name, language)
    ref = TemplateRef(
        name=name,
        language=spec.language if spec is not None else (language or "ru"),
        params=[clean_param(p) for p in params],
    )
    spec = check(account, ref)
    return ref, render(spec, ref.params)
