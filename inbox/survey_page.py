"""The customer's survey page: ``GET /survey/{token}`` and ``POST /survey/{token}``
(docs/survey.md). No login: the signed, expiring token is the permission.

The page is rendered here from ``inbox/web/survey.html`` (both languages in the page;
Accept-Language or ``?lang=`` picks the one shown, ``survey.js`` switches without a
reload) and answered with a plain form POST, so it works without JavaScript too. Its
assets are ``/survey-static/survey.{css,js}``; no external asset, the web inbox's strict
Content-Security-Policy.

Answers: ``200`` the page (the form, "already answered", or "thank you"); ``403`` a
forged or malformed link and ``410`` an expired one, each a page saying so (JSON clients
get problem+json); ``409`` a second answer (nothing changes); ``422`` an incomplete or
out-of-range answer (the form again, with what is missing).

After an answer is stored: the survey deal gets ``survey_<key>`` and ``survey_comment``,
moves by the survey's thresholds, and ``survey.answered`` is appended. Each step is
idempotent; a survey answered but not followed up (the process died) is followed up
again by the next POST to it.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path
from string import Template
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web

from config.models import AppConfig, Survey
from crm_store import entities, surveys
from crm_store.stages import StageError, move_stage
from crm_store.store import Document, Store
from inbox.web_page import CSP
from ingest.context import SERVICE, problem

log = structlog.get_logger("omniroute.survey")

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS = {"survey.js": "text/javascript", "survey.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}
COMMENT_MAX = 2000
Lang = Literal["ru", "en"]

TEXTS: dict[str, dict[Lang, str]] = {
    "submit": {"ru": "Отправить", "en": "Send"},
    "comment": {"ru": "Комментарий (необязательно)", "en": "Comment (optional)"},
    "scale": {"ru": "1 — плохо, 5 — отлично", "en": "1 — poor, 5 — excellent"},
    "switch": {"ru": "English", "en": "Русский"},
    "thanks": {"ru": "Спасибо! Ваш ответ сохранён.", "en": "Thank you! Your answer is saved."},
    "answered": {
        "ru": "Вы уже ответили на этот опрос. Спасибо!",
        "en": "You have already answered this survey. Thank you!",
    },
    "expired": {
        "ru": "Срок действия ссылки истёк. Попросите менеджера прислать новую.",
        "en": "This link has expired. Ask your manager for a new one.",
    },
    "forged": {
        "ru": "Ссылка недействительна. Проверьте, что она скопирована целиком.",
        "en": "This link is not valid. Check that it was copied in full.",
    },
    "missing": {
        "ru": "Опрос не найден.",
        "en": "The survey was not found.",
    },
    "incomplete": {
        "ru": "Пожалуйста, оцените каждый пункт от 1 до 5.",
        "en": "Please rate every item from 1 to 5.",
    },
}


def _both(key: str) -> str:
    t = TEXTS[key]
    return (
        f'<span lang="ru">{html.escape(t["ru"])}</span>'
        f'<span lang="en">{html.escape(t["en"])}</span>'
    )


def _lang(request: web.Request) -> Lang:
    chosen = request.query.get("lang")
    if chosen in ("ru", "en"):
        return "ru" if chosen == "ru" else "en"
    for part in request.headers.get("Accept-Language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("ru"):
            return "ru"
        if tag.startswith("en"):
            return "en"
    return "ru"


def _page(
    lang: Lang,
    status: int,
    *,
    title: tuple[str, str] = ("Опрос", "Survey"),
    body: str,
) -> web.Response:
    template = Template((WEB_DIR / "survey.html").read_text(encoding="utf-8"))
    page = template.substitute(
        lang=lang,
        title_ru=html.escape(title[0]),
        title_en=html.escape(title[1]),
        switch=_both("switch"),
        other="en" if lang == "ru" else "ru",
        body=body,
    )
    return web.Response(
        text=page, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
    )


def _message(lang: Lang, status: int, key: str, survey: Survey | None = None) -> web.Response:
    title = (survey.title_ru, survey.title_en) if survey else ("Опрос", "Survey")
    return _page(
        lang, status, title=title, body=f'<p class="message" id="message">{_both(key)}</p>'
    )


def _form(lang: Lang, token: str, survey: Survey, error: str | None = None) -> web.Response:
    rows: list[str] = []
    for q in survey.questions:
        name = f"q_{q.key}"
        buttons = "".join(
            f'<label class="score"><input type="radio" name="{name}" value="{n}" required>'
            f"<span>{n}</span></label>"
            for n in range(1, 6)
        )
        rows.append(
            f'<fieldset class="question" data-key="{html.escape(q.key)}">'
            f'<legend><span lang="ru">{html.escape(q.ru)}</span>'
            f'<span lang="en">{html.escape(q.en)}</span></legend>'
            f'<div class="scores">{buttons}</div></fieldset>'
        )
    comment = (
        f'<label class="comment">{_both("comment")}'
        f'<textarea name="comment" rows="4" maxlength="{COMMENT_MAX}"></textarea></label>'
        if survey.comment
        else ""
    )
    err = f'<p class="error" id="error" role="alert">{_both(error)}</p>' if error else ""
    body = (
        f'<form method="post" action="/survey/{html.escape(token)}" id="survey">'
        f'<p class="scale">{_both("scale")}</p>{err}{"".join(rows)}{comment}'
        f'<input type="hidden" name="lang" value="{lang}" id="lang">'
        f'<button type="submit" class="send">{_both("submit")}</button></form>'
    )
    status = 422 if error else 200
    return _page(lang, status, title=(survey.title_ru, survey.title_en), body=body)


def _wants_json(request: web.Request) -> bool:
    return request.content_type == "application/json" or (
        "application/json" in request.headers.get("Accept", "")
        and "text/html" not in request.headers.get("Accept", "")
    )


def _survey_config(config: AppConfig, doc: Document) -> Survey | None:
    pipeline = config.pipeline(doc.get("pipeline") or "") if doc.get("pipeline") else None
    return pipeline.survey(doc.get("survey") or "") if pipeline is not None else None


async def _resolve(
    request: web.Request,
) -> tuple[Lang, str, Document | None, Survey | None, web.Response | None]:
    """The token's survey, or the answer refusing it."""
    svc = request.app[SERVICE]
    lang = _lang(request)
    token = request.match_info["token"]
    signer = await surveys.signer(svc.store)
    verdict, sid = signer.check(token, datetime.now(UTC))
    json = _wants_json(request)
    if verdict is surveys.Verdict.FORGED or sid is None:
        if json:
            return lang, token, None, None, problem(403, "invalid_link", "the link is not valid")
        return lang, token, None, None, _message(lang, 403, "forged")
    doc = await surveys.get(svc.store, sid)
    survey = _survey_config(svc.config, doc) if doc is not None else None
    if verdict is surveys.Verdict.EXPIRED:
        if json:
            return lang, token, doc, survey, problem(410, "link_expired", "the link has expired")
        return lang, token, doc, survey, _message(lang, 410, "expired", survey)
    if doc is None or survey is None:
        if json:
            return lang, token, None, None, problem(404, "not_found", "no such survey")
        return lang, token, None, None, _message(lang, 404, "missing")
    return lang, token, doc, survey, None


async def get_page(request: web.Request) -> web.Response:
    lang, token, doc, survey, refused = await _resolve(request)
    if refused is not None:
        return refused
    assert doc is not None
    assert survey is not None
    if doc.get("answered_at") is not None:
        return _message(lang, 200, "answered", survey)
    return _form(lang, token, survey)


async def post_answer(request: web.Request) -> web.Response:
    lang, token, doc, survey, refused = await _resolve(request)
    if refused is not None:
        return refused
    assert doc is not None
    assert survey is not None
    svc = request.app[SERVICE]
    json = _wants_json(request)
    if doc.get("answered_at") is not None:
        if doc.get("followed_up_at") is None:
            await follow_up(svc.store, svc.config, doc, survey)
        if json:
            return problem(409, "already_answered", "this survey was answered before")
        return _message(lang, 409, "answered", survey)
    fields = await _read(request)
    if fields is None:
        if json:
            return problem(422, "invalid_answer", "the body is not a form or JSON object")
        return _form(lang, token, survey, "incomplete")
    answers, comment, chosen = _answers(survey, fields)
    lang = chosen or lang
    if answers is None:
        if json:
            return problem(
                422,
                "invalid_answer",
                "every question needs a score 1..5",
                questions=[q.key for q in survey.questions],
            )
        return _form(lang, token, survey, "incomplete")
    stored = await surveys.answer(svc.store, doc["_id"], answers, comment, lang, datetime.now(UTC))
    if stored is None:  # another answer won the race
        if json:
            return problem(409, "already_answered", "this survey was answered before")
        return _message(lang, 409, "answered", survey)
    await follow_up(svc.store, svc.config, stored, survey)
    log.info("survey.answered", survey_id=stored["_id"], deal_id=stored["deal_id"])
    if json:
        return web.json_response({"ok": True, "state": "answered"})
    return _message(lang, 200, "thanks", survey)


async def _read(request: web.Request) -> dict[str, Any] | None:
    try:
        if request.content_type == "application/json":
            value = orjson.loads(await request.read())
            return value if isinstance(value, dict) else None
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}
    except (orjson.JSONDecodeError, ValueError, UnicodeDecodeError):
        return None


def _answers(
    survey: Survey, fields: dict[str, Any]
) -> tuple[dict[str, int] | None, str | None, Lang | None]:
    """Scores by question key (None if any is missing or not 1..5), the comment, the
    language. JSON bodies may nest the scores under ``answers``."""
    nested = fields.get("answers")
    scores = nested if isinstance(nested, dict) else {}
    out: dict[str, int] = {}
    for q in survey.questions:
        raw = scores.get(q.key, fields.get(f"q_{q.key}"))
        if isinstance(raw, bool):
            return None, None, None
        try:
            value = int(raw) if isinstance(raw, int | str) else None
        except ValueError:
            value = None
        if value is None or not 1 <= value <= 5:
            return None, None, None
        out[q.key] = value
    comment = fields.get("comment")
    text = comment.strip()[:COMMENT_MAX] if isinstance(comment, str) and survey.comment else ""
    lang = fields.get("lang")
    return out, text or None, ("en" if lang == "en" else "ru" if lang == "ru" else None)


async def follow_up(store: Store, config: AppConfig, doc: Document, survey: Survey) -> None:
    """The answer onto the deal, the thresholds' move, ``survey.answered`` (each step
    idempotent, keyed by the survey)."""
    deal_id: str = doc["deal_id"]
    values: dict[str, Any] = {f"survey_{k}": v for k, v in (doc.get("answers") or {}).items()}
    values["survey_comment"] = doc.get("comment")
    at: datetime = doc.get("answered_at") or datetime.now(UTC)
    try:
        await entities.set_fields(
            store, "deal", deal_id, values, by="survey", at=at, key=doc["_id"]
        )
    except entities.EntityError:
        log.warning("survey.deal_gone", survey_id=doc["_id"], deal_id=deal_id)
    _, all_top = surveys.summary(doc, survey.thresholds.top)
    stage = survey.thresholds.all_top_stage if all_top else survey.thresholds.otherwise_stage
    pipeline = config.pipeline(doc.get("pipeline") or "") if doc.get("pipeline") else None
    if stage is not None and pipeline is not None:
        deal = await entities.get(store, "deal", deal_id)
        if deal is not None and deal.get("stage_id") != stage and deal.get("open", True):
            try:
                await move_stage(
                    store, "deal", deal_id, pipeline, stage, "survey", at=at, key=doc["_id"]
                )
            except StageError as exc:
                log.warning("survey.not_moved", survey_id=doc["_id"], stage=stage, error=str(exc))
    await surveys.announce(store, doc, survey.thresholds.top)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    body = (WEB_DIR / name).read_bytes()
    return web.Response(
        body=body,
        headers={
            **HEADERS,
            "Cache-Control": "no-cache",
            "Content-Type": f"{content_type}; charset=utf-8",
        },
    )


def setup(app: web.Application) -> None:
    app.router.add_get("/survey/{token}", get_page)
    app.router.add_post("/survey/{token}", post_answer)
    app.router.add_get("/survey-static/{name}", asset)
