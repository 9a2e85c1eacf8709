"""Automatic mail: auto-replies, bounces (DSN and MAILER-DAEMON text) and list/bulk mail.

Pure decisions on header values and a little body text; no I/O. The rules, in order
(the first that matches wins):

1. BOUNCE: a ``multipart/report; report-type=delivery-status`` or any
   ``message/(global-)delivery-status`` part; or a From of ``MAILER-DAEMON@…`` /
   ``postmaster@…`` / "Mail Delivery System" with a DSN-like subject or body.
2. AUTO_REPLY: ``Auto-Submitted`` other than ``no``, ``X-Autoreply``, ``X-Autorespond``,
   ``X-Auto-Response-Suppress``, ``Precedence: auto_reply``, ``X-Autoreply-From``,
   ``X-Mail-Autoreply``, or an out-of-office subject ("Automatic reply:",
   "Автоматический ответ:", "Out of Office:" …).
3. BOUNCE: a null reverse path (``Return-Path: <>``) with none of the above.
4. BULK: ``Precedence: bulk/junk/list``, ``List-Id``, ``List-Unsubscribe``,
   ``List-Unsubscribe-Post``, ``Feedback-ID``, or a mass-mailing service's campaign
   header (Mailchimp, Sendinblue/Brevo, Mailgun, SendGrid, UniSender, Mindbox …).
   A read receipt (``multipart/report; report-type=disposition-notification``) is an
   AUTO_REPLY, an abuse feedback report (``report-type=feedback-report``) a NOTIFICATION.
5. NOTIFICATION: a ticketing or monitoring system's header (Jira, Redmine, Zendesk,
   Freshdesk, OTRS, GitHub, GitLab, Zabbix, Nagios, Grafana …), or a sender address that
   no person writes from (``noreply@``, ``no-reply@``, ``donotreply@``, ``mailer@``,
   ``notifications@``, ``alerts@``, ``bounces@`` …).

:func:`explain` returns the kind with the rule that matched, in words (the routing
decision's reason says it). Whether a mailbox's allow-list (``customer_senders``) makes
such a sender a customer after all is the channel's decision, not the parser's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from enum import StrEnum


class AutoKind(StrEnum):
    AUTO_REPLY = "auto_reply"  # Auto-Submitted != no, X-Autoreply, X-Autorespond,
    # X-Auto-Response-Suppress, Precedence auto_reply
    BOUNCE = "bounce"  # multipart/report delivery-status, null Return-Path (<>),
    # From MAILER-DAEMON@ / postmaster@ with a DSN-like body
    BULK = "bulk"  # Precedence bulk/junk/list, List-Id, List-Unsubscribe, Feedback-ID,
    # campaign headers of mass-mailing services
    NOTIFICATION = "notification"  # ticketing/monitoring systems, noreply@-style senders


_DAEMON = re.compile(
    r"(?:^|[<\s\"'])(mailer-daemon|postmaster|mail-daemon|mailerdaemon)(?:@|\s|>|$)"
    r"|mail delivery (?:system|subsystem)|почтовая служба|служба доставки",
    re.IGNORECASE,
)
_DSN_TEXT = re.compile(
    r"undeliver|delivery status notification|delivery (?:has )?failed|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|couldn't be delivered|"
    r"wasn't delivered|was not delivered|delivery to the following recipient|"
    r"permanent error|final-recipient|diagnostic-code|\b5\.\d\.\d+\b|"
    r"не может быть доставлено|не доставлено|недоставленное|не удалось доставить|"
    r"ошибка доставки|сообщение не доставлено",
    re.IGNORECASE,
)
_OOO_SUBJECT = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[- ]?(?:reply|response)|autoreply|"
    r"out of (?:the )?office|abwesenheitsnotiz|automatische antwort|réponse automatique|"
    r"respuesta automática|автоматический ответ|автоответ|нет на месте)\b",
    re.IGNORECASE,
)
_AUTO_FLAGS = (
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
    "x-autoreply-from",
    "x-mail-autoreply",
)
# Newsletters: headers mass-mailing services add to every campaign mail.
_BULK_HEADERS = (
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
    "x-campaign",
    "x-campaign-id",
    "x-campaignid",
    "x-mc-user",  # Mailchimp / Mandrill
    "x-mailchimp-campaign",
    "x-mailgun-campaign-id",
    "x-sg-eid",  # SendGrid
    "x-sib-id",  # Sendinblue / Brevo
    "x-unisender-campaign",
    "x-mindbox-campaign",
    "x-csa-complaints",
    "x-newsletter",
)
# Ticketing, monitoring and CI systems.
_SYSTEM_HEADERS = (
    "x-jira-fingerprint",
    "x-redmine-host",
    "x-redmine-project",
    "x-zendesk-from-account-id",
    "x-freshdesk-ticket-id",
    "x-otrs-loop",
    "x-github-reason",
    "x-gitlab-project",
    "x-zabbix-trigger",
    "x-nagios-notification",
    "x-grafana-alert",
    "x-prometheus-alert",
    "x-pagerduty-incident",
    "x-sentry-project",
)
# Mailers whose X-Mailer says a system, not a person, wrote the mail.
_SYSTEM_MAILER = re.compile(
    r"\b(?:zabbix|nagios|icinga|grafana|prometheus|alertmanager|jira|redmine|otrs|znuny|"
    r"zendesk|freshdesk|bitrix24 notifications|gitlab|jenkins|sentry)\b",
    re.IGNORECASE,
)
# Local parts no person writes from.
_SYSTEM_LOCAL = re.compile(
    r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|mailer|notifications?|"
    r"notify|alerts?|monitoring|bounces?|daemon|automated|robot|system|jira|redmine|"
    r"zabbix|nagios|newsletters?|news|digest|updates)(?:[-_.+][^@]*)?$",
    re.IGNORECASE,
)
_ADDRESS = re.compile(r"[^\s<>\"(),;:]+@[^\s<>\"(),;:]+")

# multipart/report kinds other than delivery status (RFC 8098 MDN, RFC 5965 ARF).
_REPORTS: dict[str, tuple[AutoKind, str]] = {
    "disposition-notification": (
        AutoKind.AUTO_REPLY,
        "a disposition notification (read receipt)",
    ),
    "feedback-report": (AutoKind.NOTIFICATION, "an abuse feedback report"),
}

# Every header field the rules read (lower-case).
AUTO_HEADERS = (
    *_AUTO_FLAGS,
    "auto-submitted",
    "precedence",
    *_BULK_HEADERS,
    *_SYSTEM_HEADERS,
    "x-mailer",
)


def _first(headers: Mapping[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[0].strip() if values else None


def _token(value: str) -> str:
    return value.split(";", 1)[0].strip().strip('"').lower()


def is_auto_reply(headers: Mapping[str, list[str]], subject: str) -> bool:
    submitted = _first(headers, "auto-submitted")
    if submitted is not None and _token(submitted) not in ("", "no"):
        return True
    for name in _AUTO_FLAGS:
        value = _first(headers, name)
        if value is not None and _token(value) not in ("no", "false", "0"):
            return True
    precedence = _first(headers, "precedence")
    if precedence is not None and _token(precedence) in ("auto_reply", "auto-reply"):
        return True
    return bool(_OOO_SUBJECT.match(subject))


def is_bulk(headers: Mapping[str, list[str]]) -> bool:
    return bulk_rule(headers) is not None


def bulk_rule(headers: Mapping[str, list[str]]) -> str | None:
    """Why the mail is list or campaign mail, or None."""
    precedence = _first(headers, "precedence")
    if precedence is not None and _token(precedence) in ("bulk", "junk", "list"):
        return f"Precedence: {_token(precedence)}"
    for name in _BULK_HEADERS:
        if headers.get(name):
            return f"{_display(name)} header (list or newsletter mail)"
    return None


def system_rule(headers: Mapping[str, list[str]], from_raw: str) -> str | None:
    """Why the mail was written by a system (ticketing, monitoring, noreply@), or None."""
    for name in _SYSTEM_HEADERS:
        if headers.get(name):
            return f"{_display(name)} header (ticketing or monitoring system)"
    mailer = _first(headers, "x-mailer")
    if mailer is not None and (m := _SYSTEM_MAILER.search(mailer)):
        return f"X-Mailer {m.group(0)} (ticketing or monitoring system)"
    addr = sender_address(from_raw)
    if addr is not None and _SYSTEM_LOCAL.match(addr.rsplit("@", 1)[0]):
        return f"sender {addr} is a no-reply / system address"
    return None


def sender_address(from_raw: str) -> str | None:
    """The first address in a From value (lower-case), for the rules above."""
    m = _ADDRESS.search(from_raw)
    return m.group(0).lower().strip(".") if m else None


def _display(name: str) -> str:
    return "-".join(
        p.upper() if p in ("id", "mc", "sg", "sib", "csa") else p.capitalize()
        for p in name.split("-")
    )


def looks_like_daemon(from_raw: str) -> bool:
    return bool(_DAEMON.search(from_raw))


def classify(
    headers: Mapping[str, list[str]],
    *,
    subject: str,
    from_raw: str,
    body_start: str,
    has_delivery_status: bool,
    null_return_path: bool,
) -> AutoKind | None:
    """The kind of automatic mail, or None for a (probably) human message."""
    found = explain(
        headers,
        subject=subject,
        from_raw=from_raw,
        body_start=body_start,
        has_delivery_status=has_delivery_status,
        null_return_path=null_return_path,
    )
    return found[0] if found else None


def explain(
    headers: Mapping[str, list[str]],
    *,
    subject: str,
    from_raw: str,
    body_start: str,
    has_delivery_status: bool,
    null_return_path: bool,
    report_type: str | None = None,
) -> tuple[AutoKind, str] | None:
    """The kind of automatic mail and the rule that matched, or None for a human message.

    ``headers``: lower-case header name → values of the top-level message;
    ``body_start``: the first few KB of the readable text; ``report_type``: the
    report-type of a top-level multipart/report other than a delivery-status one.
    """
    if has_delivery_status:
        return AutoKind.BOUNCE, "a delivery-status report (bounce)"
    if report_type in _REPORTS:
        return _REPORTS[report_type]
    if (looks_like_daemon(from_raw) or (null_return_path and not from_raw.strip())) and (
        _DSN_TEXT.search(subject) or _DSN_TEXT.search(body_start)
    ):
        return AutoKind.BOUNCE, "a mailer daemon's delivery failure text (bounce)"
    if is_auto_reply(headers, subject):
        return AutoKind.AUTO_REPLY, _auto_reply_rule(headers, subject)
    if null_return_path:
        return AutoKind.BOUNCE, "null reverse path (Return-Path: <>)"
    if (bulk := bulk_rule(headers)) is not None:
        return AutoKind.BULK, bulk
    if (system := system_rule(headers, from_raw)) is not None:
        return AutoKind.NOTIFICATION, system
    return None


def _auto_reply_rule(headers: Mapping[str, list[str]], subject: str) -> str:
    submitted = _first(headers, "auto-submitted")
    if submitted is not None and _token(submitted) not in ("", "no"):
        return f"Auto-Submitted: {_token(submitted)}"
    for name in _AUTO_FLAGS:
        if _first(headers, name) is not None:
            return f"{_display(name)} header (auto-reply)"
    if _first(headers, "precedence") is not None and _OOO_SUBJECT.match(subject) is None:
        return "Precedence: auto_reply"
    return "out-of-office subject (auto-reply)"


# ---------------------------------------------------------------- DSN (RFC 3464)

_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$")


def dsn_fields_from_text(text: str) -> list[list[tuple[str, str]]]:
    """The header-like blocks of a delivery-status body given as text."""
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continue
        if line[:1] in (" ", "\t") and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}")
            continue
        m = _FIELD.match(line)
        if m:
            current.append((m.group(1), m.group(2).strip()))
    if current:
        blocks.append(current)
    return blocks


def _recipient(value: str) -> str | None:
    addr = value.split(";", 1)[1] if ";" in value else value
    addr = addr.strip().strip("<>").strip().strip('"').strip()
    return addr.lower() if "@" in addr and " " not in addr else None


def failed_recipients(blocks: Iterable[list[tuple[str, str]]]) -> list[str]:
    """Final-/Original-Recipient addresses of per-recipient blocks whose delivery failed.

    A block fails with ``Action: failed``; a block without Action fails on a 5.x.x Status.
    """
    out: list[str] = []
    for block in blocks:
        fields: dict[str, str] = {}
        for name, value in block:
            fields.setdefault(name.lower(), value)
        action = fields.get("action", "").split("(", 1)[0].strip().lower()
        status = fields.get("status", "").strip()
        failed = action == "failed" or (not action and status.startswith("5"))
        if not failed:
            continue
        for key in ("final-recipient", "original-recipient"):
            if key in fields:
                addr = _recipient(fields[key])
                if addr and addr not in out:
                    out.append(addr)
    return out
