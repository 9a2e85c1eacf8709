"""Documents from templates over HTTP against the running service and the store
(docs/documents.md): generated via the API and by the automation action on a stage move,
read back with python-docx; numbering under retries and concurrency; versions; the signed
scan; the stage guard; the registry's filters; access; sending by e-mail; PDF when
LibreOffice is installed."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import docx
import orjson
import pytest

from automation.paperwork import make, render
from config.loader import check_config, load_config
from config.models import AppConfig, RequiredDocument
from config.settings import DEFAULT_CONFIG_DIR
from crm_store import tokens
from crm_store.documents import stable_id
from crm_store.stages import StageError
from crm_store.store import Document, Store
from tests.automation_support import msk, robots, seed_config
from tests.helpers import wait_for
from tests.mail_support import (
    MAIL_PASSWORD,
    Dovecot,
    append,
    dovecot_available,
    email_account,
    mail,
    mail_config,
    routed_mail,
    smtp_sink,
)
from tests.service import InProcess, in_process

ANNA, OLGA, ADMIN = "anna.smirnova", "olga.ivanova", "sergey.volkov"
SALES_BOX = "sales@example.test"
NB = "\u00a0"
ITEMS = [
    {"name": "Шкаф-купе «Классик»", "quantity": 2, "unit": "шт.", "price": 61500},
    {"name": "Монтаж", "quantity": 1, "unit": "усл.", "price": "123,45"},
    "not an item",
]
TOTAL = f"123{NB}123,45{NB}₽"
TOTAL_WORDS = "Сто двадцать три тысячи сто двадцать три рубля 45 копеек"
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def guarded_config() -> AppConfig:
    """The example config, its "won" waiting for a signed acceptance act (instead of the
    field documents_signed)."""
    cfg = load_config(DEFAULT_CONFIG_DIR)
    pipelines = []
    for p in cfg.pipelines.pipelines:
        if p.id == "orders":
            stages = [
                s.model_copy(
                    update={
                        "requires": [],
                        "requires_documents": [RequiredDocument(type="acceptance_act")],
                    }
                )
                if s.id == "won"
                else s
                for s in p.stages
            ]
            p = p.model_copy(update={"stages": stages})
        pipelines.append(p)
    return cfg.model_copy(
        update={"pipelines": cfg.pipelines.model_copy(update={"pipelines": pipelines})}
    )


@dataclass
class Api:
    svc: InProcess
    tokens: dict[str, str]

    async def call(self, method: str, path: str, who: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = f"{self.svc.client.base}/api/v1{path}"
        async with self.svc.client.http.request(method, url, data=data, headers=headers) as r:
            raw = await r.read()
            if r.content_type.endswith("json"):
                return r.status, orjson.loads(raw)
            return r.status, raw

    async def upload(self, path: str, who: str, data: bytes, name: str, ctype: str) -> Any:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type=ctype)
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        url = f"{self.svc.client.base}/api/v1{path}"
        async with self.svc.client.http.post(url, data=form, headers=headers) as r:
            return r.status, orjson.loads(await r.read())


@asynccontextmanager
async def api(
    mongo_uri: str, db_name: str, config: AppConfig | None = None, **settings: Any
) -> AsyncIterator[Api]:
    async with in_process(mongo_uri, db_name, config, **settings) as svc:
        issued = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA, ADMIN)}
        yield Api(svc, issued)


async def seed_deal(store: Store, name: str, stage: str = "installation", **fields: Any) -> str:
    """A deal of Anna's with a contact and a company (as the companies module stores it)."""
    company_id = stable_id("company", name)
    await store["companies"].insert_one(
        {
            "_id": company_id,
            "name": f"ООО «{name}» & Co",
            "inn": "7701234567",
            "kpp": "770101001",
            "address": "г. Москва, ул. Ленина, д. 1",
            "responsible_id": ANNA,
        }
    )
    contact_id = stable_id("contact", name)
    await store.contacts.insert_one(
        {
            "_id": contact_id,
            "name": "Иван Петров",
            "phones": ["+79001234567"],
            "identities": [f"phone:+7900{abs(hash(name)) % 10**7:07d}"],
            "responsible_id": ANNA,
            "company_id": company_id,
        }
    )
    deal_id = stable_id("deal", name)
    await store.deals.insert_one(
        {
            "_id": deal_id,
            "contact_id": contact_id,
            "pipeline_id": "orders",
            "stage_id": stage,
            "open": True,
            "is_repeat": False,
            "responsible_id": ANNA,
            "title": f"Кухня <{name}>",
            "fields": {"items": ITEMS, "prepayment": 50000, **fields},
            "created_at": datetime.now(UTC),
        }
    )
    return deal_id


def read_docx(data: bytes) -> tuple[list[str], list[list[list[str]]]]:
    d = docx.Document(io.BytesIO(data))
    tables = [[[c.text for c in row.cells] for row in t.rows] for t in d.tables]
    return [p.text for p in d.paragraphs], tables


async def test_generate_version_sign_guard_and_registry(mongo_uri: str, db_name: str) -> None:
    async with api(mongo_uri, db_name, guarded_config()) as a:
        store = a.svc.store
        deal = await seed_deal(store, "Ромашка")
        year = datetime.now(UTC).year

        # Generated via the API, read back.
        status, spec = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "specification", "key": "k1"}
        )
        assert status == 201, spec
        assert (spec["number"], spec["version"], spec["status"]) == (
            f"СП-{year}-0001",
            1,
            "generated",
        )
        assert set(spec["links"]) == {"docx"}
        status, raw = await a.call("GET", f"/documents/{spec['id']}/file", ANNA)
        assert status == 200
        paragraphs, [table] = read_docx(raw)
        assert paragraphs[0] == f"СПЕЦИФИКАЦИЯ № СП-{year}-0001"
        assert paragraphs[2] == "к договору по заказу «Кухня <Ромашка>»"
        assert "ООО «Ромашка» & Co (ИНН 7701234567, КПП 770101001" in paragraphs[3]
        assert f"Общая стоимость: {TOTAL} ({TOTAL_WORDS})" in paragraphs[4]
        assert table[1:] == [
            ["1", "Шкаф-купе «Классик»", "2", "шт.", f"61{NB}500,00{NB}₽", f"123{NB}000,00{NB}₽"],
            ["2", "Монтаж", "1", "усл.", f"123,45{NB}₽", f"123,45{NB}₽"],
            ["", "Итого", "", "", "", TOTAL],
        ]
        # The signed link works without a token.
        async with a.svc.client.http.get(spec["links"]["docx"]) as resp:
            assert (resp.status, await resp.read()) == (200, raw)

        # The same key again: the same document, no second number.
        again = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "specification", "key": "k1"}
        )
        assert (again[0], again[1]["id"], again[1]["number"]) == (201, spec["id"], spec["number"])
        # Regenerating: version 2, the same number; version 1 and its file are kept.
        status, v2 = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "specification"}
        )
        assert (status, v2["version"], v2["number"]) == (201, 2, spec["number"])
        assert v2["file_id"] != spec["file_id"]
        status, v1 = await a.call("GET", f"/documents/{spec['id']}", ANNA)
        assert (v1["version"], v1["file_id"], v1["status"]) == (1, spec["file_id"], "generated")
        assert await store["files"].count_documents({"_id": spec["file_id"]}) == 1

        # Refusals: an unknown type; another department's manager sees nothing.
        status, err = await a.call("POST", f"/deals/{deal}/documents", ANNA, {"type": "nope"})
        assert (status, err["code"], err["errors"][0]["field"]) == (422, "unknown_type", "type")
        for method, path, body in (
            ("GET", f"/documents/{spec['id']}", None),
            ("GET", f"/documents/{spec['id']}/file", None),
            ("POST", f"/documents/{spec['id']}/sent", None),
            ("POST", f"/deals/{deal}/documents", {"type": "contract"}),
        ):
            assert (await a.call(method, path, OLGA, body))[0] == 404, path
        status, page = await a.call("GET", "/documents", OLGA)
        assert (status, page["items"]) == (200, [])

        # The guard: "won" waits for a signed acceptance act.
        status, err = await a.call("POST", f"/deals/{deal}/stage", ANNA, {"stage_id": "won"})
        assert (status, err["code"]) == (422, "stage_refused")
        assert err["unmet"] == ["a signed acceptance_act document is required"]
        status, act = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "acceptance_act"}
        )
        assert act["number"] == f"А-{year}-0001"
        status, err = await a.call("POST", f"/deals/{deal}/stage", ANNA, {"stage_id": "won"})
        assert status == 422  # generated is not signed
        # Marked sent, then the signed scan: forward only.
        status, sent = await a.call("POST", f"/documents/{act['id']}/sent", ANNA)
        assert (status, sent["status"]) == (200, "sent")
        status, err = await a.upload(
            f"/documents/{act['id']}/signed", ANNA, b"just text", "act.pdf", "application/pdf"
        )
        assert (status, err["code"]) == (415, "unsupported_file_type")
        status, signed = await a.upload(
            f"/documents/{act['id']}/signed", ANNA, PDF, "act-signed.pdf", "application/pdf"
        )
        assert (status, signed["status"], signed["id"]) == (200, "signed", act["id"])
        assert [h["status"] for h in signed["history"]] == ["generated", "sent", "signed"]
        assert set(signed["links"]) == {"docx", "signed"}
        status, scan = await a.call("GET", f"/documents/{act['id']}/file?format=signed", ANNA)
        assert (status, scan) == (200, PDF)
        status, still = await a.call("POST", f"/documents/{act['id']}/sent", ANNA)
        assert still["status"] == "signed"
        fields = (await store.deals.find_one({"_id": deal}) or {})["fields"]
        assert fields["documents_signed"] is True  # the template's signed_field
        status, moved = await a.call("POST", f"/deals/{deal}/stage", ANNA, {"stage_id": "won"})
        assert (status, moved["stage_id"]) == (200, "won")

        # The registry's filters.
        other = await seed_deal(store, "Лютик")
        status, contract = await a.call(
            "POST", f"/deals/{other}/documents", ADMIN, {"type": "contract"}
        )
        assert contract["number"] == f"Д-{year}-0001"

        async def ids(query: str, who: str = ANNA) -> list[str]:
            status, page = await a.call("GET", f"/documents?{query}", who)
            assert status == 200, page
            return [d["id"] for d in page["items"]]

        assert await ids(f"deal_id={deal}") == [act["id"], v2["id"], spec["id"]]
        assert await ids("type=specification") == [v2["id"], spec["id"]]
        assert await ids(f"number={contract['number']}") == [contract["id"]]
        assert await ids(f"contact_id={stable_id('contact', 'Лютик')}") == [contract["id"]]
        assert await ids(f"company_id={stable_id('company', 'Ромашка')}&type=acceptance_act") == [
            act["id"]
        ]
        today = datetime.now(UTC).date()
        assert len(await ids(f"from={today}&to={today}")) == 4
        assert await ids(f"to={today - timedelta(days=1)}") == []
        status, page = await a.call("GET", "/documents?limit=2", ANNA)
        assert len(page["items"]) == 2
        status, rest = await a.call("GET", f"/documents?limit=2&cursor={page['next_cursor']}", ANNA)
        assert [d["id"] for d in page["items"] + rest["items"]] == await ids("limit=10")
        status, err = await a.call("GET", "/documents?from=yesterday", ANNA)
        assert (status, err["errors"][0]["field"]) == (422, "from")

        events = [
            (e["type"], e["data"]["document_id"])
            async for e in store.events.find({"type": {"$regex": "^document\\."}}).sort("seq", 1)
        ]
        assert ("document.signed", act["id"]) in events
        assert ("document.sent", act["id"]) in events
        assert events.count(("document.generated", spec["id"])) == 1


async def test_a_document_being_generated_is_listed_without_its_number(
    mongo_uri: str, db_name: str
) -> None:
    """The record is stored (status pending, no number yet) before its template is filled:
    the registry lists it as such instead of failing the whole page."""
    async with api(mongo_uri, db_name, guarded_config()) as a:
        store = a.svc.store
        deal = await seed_deal(store, "Ромашка")
        status, spec = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "specification", "key": "k1"}
        )
        assert status == 201, spec
        raw = await store["deal_documents"].find_one({"_id": spec["id"]})
        assert raw is not None
        now = datetime.now(UTC)
        await store["deal_documents"].insert_one(
            {
                **raw,
                "_id": "pending-contract",
                "key": "k2",
                "type": "contract",
                "title": "Договор",
                "number": None,
                "status": "pending",
                "file_id": None,
                "created_at": now,
                "updated_at": now,
            }
        )
        status, page = await a.call("GET", f"/documents?deal_id={deal}", ANNA)
        assert status == 200, page
        got = {d["id"]: (d["number"], d["status"]) for d in page["items"]}
        assert got == {
            spec["id"]: (spec["number"], "generated"),
            "pending-contract": (None, "pending"),
        }


async def test_numbers_under_retries_and_concurrency(mongo_uri: str, db_name: str) -> None:
    cfg = load_config(DEFAULT_CONFIG_DIR)
    store = Store.open(mongo_uri, db_name)
    try:
        await store.ensure_indexes()
        deals = [await seed_deal(store, f"n{i}") for i in range(20)]
        now = datetime(2031, 3, 1, tzinfo=UTC)

        async def gen(deal: str, key: str) -> Document:
            return await make.generate(
                store, cfg, deal, "contract", key=key, by=ANNA, now=now, pdf=False
            )

        # The same request twice at once: one document, one number.
        a, b = await asyncio.gather(gen(deals[0], "same"), gen(deals[0], "same"))
        assert (a["_id"], a["number"]) == (b["_id"], b["number"])
        assert await store["deal_documents"].count_documents({"deal_id": deals[0]}) == 1
        first = int(a["number"].rsplit("-", 1)[1])
        # 20 deals at once: distinct, consecutive numbers.
        made = await asyncio.gather(*(gen(d, f"par-{d}") for d in deals[1:]))
        numbers = sorted(int(d["number"].rsplit("-", 1)[1]) for d in made)
        assert numbers == list(range(first + 1, first + 20))
        assert all(d["number"].startswith("Д-2031-") for d in made)
        # Two different requests for one deal at once: versions 1 and 2, one number.
        x, y = await asyncio.gather(gen(deals[5], "v-a"), gen(deals[5], "v-b"))
        versions = sorted([(d["version"], d["number"]) for d in (x, y)])
        assert [v for v, _ in versions] == [2, 3]  # par-… made version 1
        assert {n for _, n in versions} == {made[4]["number"]}
    finally:
        await store.close()


async def test_automation_fills_the_five_documents_at_the_contract_stage(
    mongo_uri: str, db_name: str
) -> None:
    async with api(mongo_uri, db_name, automation_poll_s=0.2) as a:
        store = a.svc.store
        deal = await seed_deal(store, "Роботы", stage="estimate", estimate_amount=120000)
        status, moved = await a.call("POST", f"/deals/{deal}/stage", ANNA, {"stage_id": "approval"})
        assert status == 200, moved

        async def five() -> bool:
            query = {"deal_id": deal, "status": "generated"}
            return await store["deal_documents"].count_documents(query) == 5

        await wait_for(five, timeout=60, message="the five documents were not generated")
        docs = {d["type"]: d async for d in store["deal_documents"].find({"deal_id": deal})}
        assert set(docs) == {"contract", "specification", "appendix", "invoice", "acceptance_act"}
        assert all(d["created_by"] == "automation:contract-documents" for d in docs.values())
        status, raw = await a.call("GET", f"/documents/{docs['invoice']['_id']}/file", ANNA)
        paragraphs, [table] = read_docx(raw)
        assert paragraphs[3] == "Покупатель: ООО «Роботы» & Co, ИНН 7701234567"
        assert paragraphs[5] == TOTAL_WORDS
        assert table[-1][-1] == TOTAL
        status, raw = await a.call("GET", f"/documents/{docs['contract']['_id']}/file", ANNA)
        paragraphs, _ = read_docx(raw)
        assert f"Цена договора: {TOTAL} ({TOTAL_WORDS})" in paragraphs[4]
        assert "4. Телефон Заказчика: +79001234567." in paragraphs
        assert paragraphs[-2].endswith("______________ Anna Smirnova")  # the responsible


@pytest.mark.skipif(render.soffice() is None, reason="LibreOffice (soffice) is not installed")
async def test_pdf_through_libreoffice(mongo_uri: str, db_name: str) -> None:
    cfg = load_config(DEFAULT_CONFIG_DIR)
    store = Store.open(mongo_uri, db_name)
    try:
        await store.ensure_indexes()
        deal = await seed_deal(store, "PDF")
        now = datetime.now(UTC)
        doc = await make.generate(store, cfg, deal, "invoice", key="pdf", by=ANNA, now=now)
        assert doc["pdf_file_id"] is not None
        meta = await store["files"].find_one({"_id": doc["pdf_file_id"]})
        assert meta is not None
        assert meta["mime_type"] == "application/pdf"
    finally:
        await store.close()


@pytest.mark.skipif(not dovecot_available(), reason="Dovecot is not installed (make test)")
async def test_send_by_email_and_refused_where_files_cannot_go(
    mongo_uri: str, db_name: str
) -> None:
    server = Dovecot({SALES_BOX: MAIL_PASSWORD})
    server.start()
    try:
        async with smtp_sink() as sink:
            cfg = mail_config(email_account("sales", "mail_sales", server, SALES_BOX, sink))
            async with api(mongo_uri, db_name, cfg) as a:
                store = a.svc.store
                await append(
                    server,
                    SALES_BOX,
                    mail(
                        sender="Ivan Petrov <ivan@customer.test>",
                        to=SALES_BOX,
                        subject="Kitchen contract",
                        text="Please send the contract.",
                        message_id="doc-q1@customer.test",
                    ),
                )
                [first] = await routed_mail(store, "sales", 1)
                deal = await seed_deal(store, "Почта")
                # The deal belongs to the mail's sender.
                await store.deals.update_one(
                    {"_id": deal}, {"$set": {"contact_id": first["contact_id"]}}
                )
                await store.conversations.update_one(
                    {"_id": first["conversation_id"]},
                    {"$set": {"department": "sales", "assignee_id": ANNA}},
                )
                status, doc = await a.call(
                    "POST", f"/deals/{deal}/documents", ANNA, {"type": "contract"}
                )
                assert status == 201, doc
                status, sent = await a.call(
                    "POST", f"/documents/{doc['id']}/send", ANNA, {"text": "Ваш договор"}
                )
                assert status == 200, sent
                assert sent["conversation_id"] == first["conversation_id"]
                assert (sent["document"]["status"], sent["document"]["history"][-1]["via"]) == (
                    "sent",
                    "email",
                )

                async def arrived() -> bool:
                    return bool(sink.received)

                await wait_for(arrived, timeout=30, message="no mail reached the SMTP server")
                [out] = sink.messages()
                assert out["To"] == "ivan@customer.test"
                # The DOCX itself is attached (RFC 2231 name), not linked.
                body = out.get_body(("plain",))
                assert body is not None
                text = body.get_content()
                assert text.startswith("Ваш договор")
                assert "/files/" not in text
                [part] = list(out.iter_attachments())
                _, raw = await a.call("GET", f"/documents/{doc['id']}/file", ANNA)
                assert part.get_content_type() == make.DOCX_MIME
                assert part.get_filename() == f"Договор {doc['number']} v1.docx"
                assert b"filename*0*=utf-8''%D0%94%D0%BE%D0%B3" in sink.received[0][2]
                assert part.get_content() == raw

                # A channel that sends text only refuses the file at once, nothing queued.
                conv = stable_id("conversation", "avito-doc")
                await store.conversations.insert_one(
                    {
                        "_id": conv,
                        "channel": "avito",
                        "account": "shop",
                        "contact_id": first["contact_id"],
                        "reply_to": "avito-chat-7",
                        "department": "sales",
                        "target": {"kind": "deal", "id": deal, "open": True},
                    }
                )
                before = await store.messages.count_documents({"direction": "out"})
                status, err = await a.call(
                    "POST", f"/documents/{doc['id']}/send", ANNA, {"conversation_id": conv}
                )
                assert status == 422, err
                assert err["code"] == "avito_attachments_unsupported"
                assert "avito cannot carry this document" in err["detail"]
                assert await store.messages.count_documents({"direction": "out"}) == before
    finally:
        server.cleanup()


def test_check_config_reports_template_problems_at_their_line(tmp_path: Path) -> None:
    target = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, target, ignore=shutil.ignore_patterns("*.py", "examples"))
    auto = target / "automation.yaml"
    auto.write_text(auto.read_text().replace("{template: appendix}", "{template: apendix}"))
    manifest = target / "templates" / "templates.yaml"
    text = manifest.read_text().replace("file: invoice.docx", "file: missing.docx")
    manifest.write_text(text.replace('"{n}"', '"{number}"'))
    problems = [(p.file, p.key, p.message) for p in check_config(target)]
    assert ("templates/templates.yaml", "templates[3].file", "no file templates/missing.docx") in (
        problems
    )
    assert any(key == "templates[3].number_format" for _, key, _ in problems)
    assert any(f == "automation.yaml" and "no document type 'apendix'" in m for f, _, m in problems)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "items",
        [None, 1, "x", []],
        [{"name": None, "quantity": "abc", "price": {"x": 1}}],
        [{"quantity": 10**30, "price": "1e400"}],
        [{"name": "x" * 10_000, "quantity": -1, "price": True}],
        [{"name": "ok"}] * 600,
    ],
)
def test_line_items_take_whatever_a_deal_holds(raw: Any) -> None:
    items, total = render.line_items(raw)
    assert len(items) <= render.MAX_ITEMS
    assert all(isinstance(i["sum"], Decimal) for i in items)
    assert isinstance(total, Decimal)


async def test_kitchen_contract_in_one_click_reminded_until_signed(
    mongo_uri: str, db_name: str
) -> None:
    """The kitchen shop's seed: the contract made from the deal card, the manager reminded
    every working day at 10:00 while the signed copy is missing, the reminders stop when it
    is uploaded, and "won" waits for it."""
    cfg = seed_config("kitchen_shop")
    async with robots(mongo_uri, db_name, config=cfg, start=msk(2025, 6, 2, 9, 0)) as r:
        deal = await r.lead_from("k-doc-1", "+79001240011", name="Olga")
        manager = deal["responsible_id"]
        await r.run()
        status, doc = await r.api(
            "POST", f"/api/v1/deals/{deal['_id']}/documents", manager, {"type": "contract"}
        )
        assert status == 201, doc
        assert doc["number"] == f"К-{datetime.now(UTC).year}/001"
        reminders = {"rule_id": "contract-signed-reminder"}
        await r.until(msk(2025, 6, 2, 10, 0))  # Monday
        await r.until(msk(2025, 6, 3, 10, 0))
        assert [n["user_id"] for n in await r.notes(**reminders)] == [manager, manager]
        with pytest.raises(StageError) as refused:
            await r.move("deal", deal["_id"], "won", by=manager)
        assert refused.value.unmet == [
            "акт приёмки подписан",
            "a signed contract document is required",
        ]

        form = aiohttp.FormData()
        form.add_field("file", PDF, filename="contract.pdf", content_type="application/pdf")
        headers = {"Authorization": f"Bearer {await r.token(manager)}"}
        url = f"{r.svc.client.base}/api/v1/documents/{doc['id']}/signed"
        async with r.svc.client.http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        assert (await r.get("deal", deal["_id"]))["fields"]["contract_signed"] is True
        await r.run()
        await r.until(msk(2025, 6, 6, 10, 0))  # Wednesday to Friday: no more reminders
        assert len(await r.notes(**reminders)) == 2
        await r.set("deal", deal["_id"], act_signed=True)
        await r.move("deal", deal["_id"], "won", by=manager)
        assert (await r.get("deal", deal["_id"]))["stage_id"] == "won"
