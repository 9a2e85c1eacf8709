"""Scenario steps about paper and the customer's survey page, played through the same
write paths as the deal card and the survey page use.

- ``document: {of, type}`` — an operator makes a document of the person's newest deal from
  its template (the deal card's one click, ``automation/paperwork/make.generate``; no PDF,
  so a run needs no LibreOffice); ``signed: true`` attaches a signed scan to the newest
  document of that type (``make.sign``: the template's ``signed_field`` is set on the deal).
- ``answer_survey: {who, answers, comment}`` — the customer answers the survey of their
  newest survey deal (``crm_store/surveys.answer`` and the page's follow-up: the scores
  onto the deal, the thresholds' move, ``survey.answered``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from automation.paperwork import make
from automation.scenario import world
from automation.scenario.inbound import StepError
from automation.scenario.model import AnswerSurvey, MakeDocumentStep, Ref
from crm_store import files, paperwork, surveys
from crm_store.documents import stable_id
from crm_store.paperwork import PaperworkError

if TYPE_CHECKING:
    from automation.scenario.runner import Player

# The smallest PDF a signed scan can be (what the deal card uploads).
SIGNED_SCAN = b"%PDF-1.4\n% a signed scan\n%%EOF\n"


async def document(player: Player, d: MakeDocumentStep) -> None:
    deal = await player.find(Ref(deal=d.of, pipeline=d.pipeline))
    who = player.by(d.by)
    now = player.clock.now()
    if not d.signed:
        try:
            rec = await make.generate(
                player.store,
                player.config,
                deal["_id"],
                d.type,
                key=f"scenario:{deal['_id']}:{d.type}:{player.next_seq()}",
                by=who,
                now=now,
                pdf=False,
            )
        except PaperworkError as exc:
            raise StepError(f"the {d.type} cannot be made: {exc}") from None
        player.say(f"{who} makes the {d.type} № {rec.get('number')} of {d.of}'s deal")
        return
    found: list[dict[str, Any]] = [
        x
        async for x in paperwork.coll(player.store).find(
            {"deal_id": deal["_id"], "type": d.type, "status": {"$ne": paperwork.PENDING}},
            sort=[("version", -1)],
        )
    ]
    if not found:
        raise StepError(f"{d.of}'s deal has no {d.type} to sign")
    rec = found[0]
    stored = await files.put(
        player.store,
        stable_id("scenario_signed", rec["_id"], str(player.next_seq())),
        SIGNED_SCAN,
        name=f"{rec.get('number')} signed.pdf",
        mime_type="application/pdf",
        origin={"uploaded_by": who, "document_id": rec["_id"], "deal_id": rec["deal_id"]},
        max_bytes=make.MAX_FILE_BYTES,
    )
    player.say(f"{who} attaches the signed {d.type} № {rec.get('number')} to {d.of}'s deal")
    await make.sign(player.store, player.config, rec, stored.id, by=who, now=now)


async def answer_survey(player: Player, a: AnswerSurvey) -> None:
    from inbox.survey_page import follow_up

    # The newest of the person's deals (in ``pipeline``) that was sent a survey.
    deals = (await world.read(player.store, player.keys)).of(a.who, "deal", a.pipeline)
    found = None
    for deal in reversed(deals):
        found = await player.store[surveys.COLLECTION].find_one({"deal_id": deal["_id"]})
        if found is not None:
            break
    if found is None:
        raise StepError(f"{a.who} was sent no survey")
    pipeline = player.config.pipeline(str(found.get("pipeline") or ""))
    survey = pipeline.survey(str(found.get("survey")))
    if survey is None:
        raise StepError(f"the survey {found.get('survey')!r} is not configured")
    player.say(
        f"{a.who} answers the survey: {a.answers}" + (f", «{a.comment}»" if a.comment else "")
    )
    stored = await surveys.answer(
        player.store, found["_id"], dict(a.answers), a.comment, "ru", player.clock.now()
    )
    if stored is None:
        raise StepError(f"{a.who}'s survey was answered before")
    await follow_up(player.store, player.config, stored, survey)
