"""Companies: INN/KPP validation, the operator API (create, search, patch, link) with the
department rule, conversion of leads into contact + company deduplicated by INN under
concurrency, and routing a company contact's message to the company's deal."""

from __future__ import annotations

import asyncio

import pytest

from crm_store.companies import id_for_inn
from crm_store.inn import inn_problem, kpp_problem
from tests.service import api_body
from tests.test_inbox_crm import ADMIN, ANNA, IVAN, OLGA, crm

SBER = "7707083893"  # a real organisation's INN (10 digits)
TRADER = "500100732259"  # a valid sole trader's INN (12 digits)


@pytest.mark.parametrize("inn", [SBER, "7736050003", TRADER, "773370857141"])
def test_valid_inn(inn: str) -> None:
    assert inn_problem(inn) is None


@pytest.mark.parametrize(
    ("inn", "why"),
    [
        ("7707083894", "check digit"),  # last digit off by one
        ("7707083839", "check digit"),  # two digits swapped
        ("500100732258", "check digits"),
        ("500100732249", "check digits"),  # the 11th digit wrong
        ("77070838", "10 digits"),
        ("77070838931", "10 digits"),
        ("77070838 3", "digits only"),
        ("７７０７０８３８９３", "digits only"),  # full-width digits
        ("", "digits only"),
    ],
)
def test_invalid_inn(inn: str, why: str) -> None:
    problem = inn_problem(inn)
    assert problem is not None
    assert why in problem


def test_kpp() -> None:
    assert kpp_problem("773601001") is None
    assert kpp_problem("7736AB001") is None
    for bad in ("77360100", "7736010011", "773a01001", "A73601001"):
        assert kpp_problem(bad) is not None


async def test_company_api_and_departments(mongo_uri: str, db_name: str) -> None:
    async with crm(mongo_uri, db_name) as c:
        status, err, ctype = await c.call(
            "POST", "/companies", ANNA, {"name": "Вектор", "inn": "7707083894"}
        )
        assert (status, ctype, err["code"]) == (422, "application/problem+json", "invalid_request")
        assert err["errors"][0]["field"] == "inn"
        assert "check digit" in err["errors"][0]["message"]
        assert await c.svc.store["companies"].count_documents({}) == 0

        body = {"name": "ООО «Вектор»", "inn": SBER, "kpp": "773601001", "type": "customer"}
        status, made, _ = await c.call("POST", "/companies", ANNA, body)
        assert status == 201, made
        assert (made["id"], made["responsible_id"]) == (id_for_inn(SBER), ANNA)
        status, again, _ = await c.call("POST", "/companies", ANNA, {**body, "name": "Vector"})
        assert (status, again["id"], again["name"]) == (201, made["id"], "ООО «Вектор»")

        status, fixed, _ = await c.call(
            "PATCH",
            f"/companies/{made['id']}",
            ANNA,
            {"kpp": "773601002", "fields": {"segment": "oil"}, "address": "Москва"},
        )
        assert status == 200, fixed
        assert (fixed["kpp"], fixed["fields"], fixed["address"]) == (
            "773601002",
            {"segment": "oil"},
            "Москва",
        )
        status, err, _ = await c.call("PATCH", f"/companies/{made['id']}", ANNA, {"inn": TRADER})
        assert (status, err["code"]) == (422, "inn_fixed")
        status, err, _ = await c.call("PATCH", f"/companies/{made['id']}", ANNA, {"kpp": "12"})
        assert status == 422
        assert err["errors"][0]["field"] == "kpp"

        # A wholesale company of Olga's: hidden from Anna (sales), seen by Ivan (above).
        status, other, _ = await c.call("POST", "/companies", OLGA, {"name": "Опт", "inn": TRADER})
        assert status == 201
        for q, who, want in (
            ("вект", ANNA, [made["id"]]),
            ("7707", ANNA, [made["id"]]),
            ("", OLGA, [other["id"]]),
            ("", ANNA, [made["id"]]),
            ("", IVAN, [other["id"], made["id"]]),
        ):
            status, page, _ = await c.call("GET", f"/companies?q={q}" if q else "/companies", who)
            assert [i["id"] for i in page["items"]] == want, (q, who)
        assert (await c.call("GET", f"/companies/{other['id']}", ANNA))[0] == 404
        assert (await c.call("GET", f"/companies/{made['id']}", OLGA))[0] == 404
        # Olga tries to create Anna's company by its INN: refused without the id.
        status, err, _ = await c.call("POST", "/companies", OLGA, body)
        assert (status, err["code"]) == (409, "inn_taken")
        assert made["id"] not in str(err)

        # One of Anna's contacts joins Olga's company: now Anna sees it (and its contact).
        lead = await c.lead_of("co-1", "+79005550001")
        contact = lead["contact_id"]
        path = f"/companies/{other['id']}/contacts"
        assert (await c.call("POST", path, ANNA, {"contact_id": contact}))[0] == 404
        status, linked, _ = await c.call("POST", path, ADMIN, {"contact_id": contact})
        assert (status, linked["changed"]) == (200, True)
        status, detail, _ = await c.call("GET", f"/companies/{other['id']}", ANNA)
        assert status == 200
        assert [x["id"] for x in detail["contacts"]] == [contact]
        status, _, _ = await c.call("DELETE", f"{path}/{contact}", ANNA)
        assert status == 200
        assert (await c.call("GET", f"/companies/{other['id']}", ANNA))[0] == 404
        types = [e["type"] async for e in c.svc.store.events.find({"type": {"$regex": "^company"}})]
        assert sorted(set(types)) == [
            "company.contact_linked",
            "company.contact_unlinked",
            "company.created",
            "company.updated",
        ]


async def test_conversion_dedupes_company_by_inn(mongo_uri: str, db_name: str) -> None:
    async with crm(mongo_uri, db_name) as c:
        leads = [await c.lead_of(f"conv-{i}", f"+7900666{i:04d}") for i in range(10)]
        company = {"name": "АО «Нефтесбыт»", "inn": SBER, "kpp": "773601001"}

        async def convert(lead_id: str) -> tuple[int, dict[str, object]]:
            status, deal, _ = await c.call(
                "POST", f"/leads/{lead_id}/convert", ANNA, {"company": company}
            )
            return status, deal

        answers = await asyncio.gather(*(convert(lead["_id"]) for lead in leads))
        assert [s for s, _ in answers] == [201] * 10, answers
        store = c.svc.store
        assert await store["companies"].count_documents({}) == 1
        cid = id_for_inn(SBER)
        assert {d["company_id"] for _, d in answers} == {cid}
        assert await store.contacts.count_documents({"company_id": cid}) == 10
        assert await store.leads.count_documents({"company_id": cid, "open": False}) == 10
        assert await store.events.count_documents({"type": "company.created"}) == 1
        status, detail, _ = await c.call("GET", f"/companies/{cid}", ANNA)
        assert (len(detail["contacts"]), len(detail["deals"])) == (10, 10)

        # A bad INN in a conversion is refused whole: the lead stays open.
        lead = await c.lead_of("conv-bad", "+79006669999")
        status, err, _ = await c.call(
            "POST", f"/leads/{lead['_id']}/convert", ANNA, {"company": {"name": "X", "inn": "1"}}
        )
        assert status == 422
        assert err["errors"][0]["field"] == "company.inn"
        assert (await store.leads.find_one({"_id": lead["_id"]}) or {})["open"] is True
        # An existing company by id; a company another department holds is not found.
        status, deal, _ = await c.call(
            "POST", f"/leads/{lead['_id']}/convert", ANNA, {"company_id": "nope"}
        )
        assert (status, deal["code"]) == (404, "not_found")
        status, deal, _ = await c.call(
            "POST", f"/leads/{lead['_id']}/convert", ANNA, {"company_id": cid}
        )
        assert (status, deal["company_id"]) == (201, cid)


async def test_company_contact_writes_into_company_deal(mongo_uri: str, db_name: str) -> None:
    async with crm(mongo_uri, db_name) as c:
        buyer = await c.lead_of("route-1", "+79007770001")
        status, deal, _ = await c.call(
            "POST", f"/leads/{buyer['_id']}/convert", ANNA, {"company": {"name": "Бюро"}}
        )
        assert status == 201
        cid = deal["company_id"]
        # A colleague at the same firm wrote once (their lead was removed as a duplicate)
        # and an operator put them in the company.
        colleague = await c.lead_of("route-0", "+79007770002")
        assert (await c.call("DELETE", f"/leads/{colleague['_id']}", IVAN))[0] == 200
        status, _, _ = await c.call(
            "POST", f"/companies/{cid}/contacts", ANNA, {"contact_id": colleague["contact_id"]}
        )
        assert status == 200
        status, body = await c.svc.client.post_api(
            api_body("route-2", phone="+79007770002", name="Коллега", text="Где счёт?")
        )
        assert status == 200
        await c.svc.routed()
        msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert msg["target"]["id"] == deal["id"]
        assert msg["decision"]["rule"] == "company_deal"
        assert msg["contact_id"] == colleague["contact_id"]
        conv = await c.svc.store.conversations.find_one({"_id": msg["conversation_id"]})
        assert conv is not None
        assert conv["assignee_id"] == ANNA

        # Once the company's deal is closed, the colleague's next message opens a lead.
        await c.svc.store.deals.update_one({"_id": deal["id"]}, {"$set": {"open": False}})
        await c.svc.store.conversations.update_one(
            {"_id": msg["conversation_id"]}, {"$set": {"target.open": False}}
        )
        status, body = await c.svc.client.post_api(
            api_body("route-3", phone="+79007770002", name="Коллега", text="Новый заказ")
        )
        await c.svc.routed()
        msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert msg["decision"]["rule"] == "repeat_lead"
        # The lead routing opens for a company's contact is the company's too.
        lead = await c.svc.store.leads.find_one({"_id": msg["target"]["id"]})
        assert lead is not None
        assert lead["company_id"] == cid
