"""The CRM views over HTTP against the running service: leads and deals (fields, stage
guards, conversion, delete), contacts (search, merge with its audit record, delete), the
pipelines, and export."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from crm_store import contacts, entities, tasks, tokens
from tests.service import InProcess, api_body, in_process

ANNA, DMITRY, OLGA, IVAN, ADMIN = (
    "anna.smirnova",
    "dmitry.kozlov",
    "olga.ivanova",
    "ivan.petrov",
    "sergey.volkov",
)


@dataclass
class Crm:
    svc: InProcess
    tokens: dict[str, str]

    async def call(
        self, method: str, path: str, who: str, body: Any = None
    ) -> tuple[int, Any, str]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        data = None if body is None else orjson.dumps(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.svc.client.http.request(
            method, f"{self.svc.client.base}/api/v1{path}", data=data, headers=headers
        ) as resp:
            raw = await resp.read()
            ctype = resp.content_type
            if ctype in ("application/json", "application/problem+json"):
                return resp.status, orjson.loads(raw), ctype
            return resp.status, raw.decode(), ctype

    async def lead_of(self, ext: str, phone: str, owner: str = ANNA) -> dict[str, Any]:
        status, body = await self.svc.client.post_api(api_body(ext, phone=phone, name=ext))
        assert status == 200, body
        await self.svc.routed()
        msg = await self.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        await entities.set_responsible(self.svc.store, "lead", msg["target"]["id"], owner)
        await self.svc.store.contacts.update_one(
            {"_id": msg["contact_id"]}, {"$set": {"responsible_id": owner}}
        )
        lead = await self.svc.store.leads.find_one({"_id": msg["target"]["id"]})
        assert lead is not None
        return lead


@asynccontextmanager
async def crm(mongo_uri: str, db_name: str) -> AsyncIterator[Crm]:
    async with in_process(mongo_uri, db_name) as svc:
        issued = {
            u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, DMITRY, OLGA, IVAN, ADMIN)
        }
        yield Crm(svc, issued)


async def test_deal_fields_stage_guards_and_conversion(mongo_uri: str, db_name: str) -> None:
    async with crm(mongo_uri, db_name) as c:
        lead = await c.lead_of("crm-1", "+79001000001")
        status, page, _ = await c.call("GET", "/leads?pipeline=leads&open=true", ANNA)
        assert [x["id"] for x in page["items"]] == [lead["_id"]]
        assert (await c.call("GET", f"/leads/{lead['_id']}", OLGA))[0] == 404
        status, detail, _ = await c.call("GET", f"/leads/{lead['_id']}", ANNA)
        assert (status, detail["entity"]["stage_id"], detail["contact"]["name"]) == (
            200,
            "new",
            "crm-1",
        )

        status, deal, _ = await c.call("POST", f"/leads/{lead['_id']}/convert", ANNA, {})
        assert (status, deal["kind"], deal["pipeline_id"], deal["stage_id"]) == (
            201,
            "deal",
            "orders",
            "estimate",
        )
        again = await c.call("POST", f"/leads/{lead['_id']}/convert", ANNA, {})
        assert again[1]["id"] == deal["id"]  # converting twice: the same deal
        assert await c.svc.store.deals.count_documents({}) == 1
        status, closed, _ = await c.call("GET", f"/leads/{lead['_id']}", ANNA)
        assert (closed["entity"]["open"], closed["entity"]["converted_to"]) == (False, deal["id"])
        conv = await c.svc.store.conversations.find_one({"contact_id": lead["contact_id"]})
        assert conv is not None
        assert conv["target"] == {"kind": "deal", "id": deal["id"], "open": True}
        # The customer writes again: the message goes to the deal.
        status, body = await c.svc.client.post_api(api_body("crm-1b", phone="+79001000001"))
        await c.svc.routed()
        msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert msg["target"]["id"] == deal["id"]

        # Guards: "approval" needs estimate_amount; the error names the field.
        path = f"/deals/{deal['id']}/stage"
        status, err, ctype = await c.call("POST", path, ANNA, {"stage_id": "approval"})
        assert (status, err["code"], ctype) == (422, "stage_refused", "application/problem+json")
        assert err["missing_fields"] == ["estimate_amount"]
        assert err["errors"] == [
            {
                "in": "body",
                "field": "fields.estimate_amount",
                "message": "required to enter approval",
            }
        ]
        status, err, _ = await c.call("POST", path, ANNA, {"stage_id": "nowhere"})
        assert (status, err["code"], err["errors"][0]["field"]) == (
            422,
            "unknown_stage",
            "stage_id",
        )
        status, edited, _ = await c.call(
            "PATCH",
            f"/deals/{deal['id']}",
            ANNA,
            {"fields": {"estimate_amount": 185000, "colour": "oak"}, "title": "Kitchen, oak"},
        )
        assert status == 200
        assert (edited["fields"], edited["title"]) == (
            {"estimate_amount": 185000, "colour": "oak"},
            "Kitchen, oak",
        )
        status, moved, _ = await c.call("POST", path, ANNA, {"stage_id": "approval"})
        assert (status, moved["stage_id"]) == (200, "approval")
        # An unmet entry condition names the field it tests, with its message.
        status, err, _ = await c.call("POST", path, ANNA, {"stage_id": "awaiting_payment"})
        assert (status, err["code"]) == (422, "stage_refused")
        assert [(e["field"], e["message"]) for e in err["errors"]] == [
            ("fields.contract_number", "required to enter awaiting_payment"),
            ("fields.amount", "required to enter awaiting_payment"),
            ("fields.payment_due_date", "the payment due date is set"),
        ]
        assert err["unmet"] == ["the payment due date is set"]
        # Back to «Расчет проекта» is allowed before shipping (the technologist's return).
        status, back, _ = await c.call("POST", path, ANNA, {"stage_id": "estimate"})
        assert (status, back["stage_id"]) == (200, "estimate")
        status, cleared, _ = await c.call(
            "PATCH", f"/deals/{deal['id']}", ANNA, {"fields": {"colour": None}}
        )
        assert cleared["fields"] == {"estimate_amount": 185000}
        status, err, _ = await c.call(
            "PATCH", f"/deals/{deal['id']}", ANNA, {"fields": {"bad name!": 1}}
        )
        assert (status, err["errors"][0]["field"]) == (422, "fields")
        status, err, _ = await c.call(
            "PATCH", f"/deals/{deal['id']}", ANNA, {"responsible_id": OLGA}
        )
        assert (status, err["code"]) == (403, "forbidden")  # wholesale: not Anna's to give
        types = [e["type"] async for e in c.svc.store.events.find({}, sort=[("seq", 1)])]
        for t in ("lead.converted", "deal.created", "deal.field_changed", "deal.stage_changed"):
            assert t in types, t

        status, pipes, _ = await c.call("GET", "/pipelines", ANNA)
        orders = next(p for p in pipes["pipelines"] if p["id"] == "orders")
        approval = next(s for s in orders["stages"] if s["id"] == "approval")
        assert approval["required_fields"] == ["estimate_amount"]

        # Delete: not for a manager; a director may.
        status, err, _ = await c.call("DELETE", f"/deals/{deal['id']}", ANNA)
        assert (status, err["code"]) == (403, "forbidden")
        status, gone, _ = await c.call("DELETE", f"/deals/{deal['id']}", IVAN)
        assert (status, gone) == (200, {"id": deal["id"], "deleted": True})
        assert (await c.call("GET", f"/deals/{deal['id']}", IVAN))[0] == 404
        assert (await c.call("GET", "/deals", IVAN))[1]["items"] == []


async def test_merge_contacts_moves_everything_once_with_an_audit_record(
    mongo_uri: str, db_name: str
) -> None:
    async with crm(mongo_uri, db_name) as c:
        first = await c.lead_of("m-1", "+79001000011")
        status, body = await c.svc.client.post_api(
            api_body("m-2", email="Client@Example.com", name="The same client")
        )
        await c.svc.routed()
        second_msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert second_msg is not None
        second_contact = second_msg["contact_id"]
        await c.svc.store.contacts.update_one(
            {"_id": second_contact}, {"$set": {"responsible_id": ANNA}}
        )
        winner = first["contact_id"]
        status, found, _ = await c.call("GET", "/contacts?q=client%40example.com", ANNA)
        assert [x["id"] for x in found["items"]] == [second_contact]
        status, found, _ = await c.call("GET", "/contacts?q=8%20900%20100-00-11", ANNA)
        assert [x["id"] for x in found["items"]] == [winner]

        path = f"/contacts/{winner}/merge"
        status, err, _ = await c.call("POST", path, ANNA, {"other_id": winner})
        assert (status, err["code"]) == (422, "same_contact")
        assert (await c.call("POST", path, OLGA, {"other_id": second_contact}))[0] == 404
        status, merged, _ = await c.call("POST", path, ANNA, {"other_id": second_contact})
        assert status == 200, merged
        assert set(merged["contact"]["identities"]) == {
            "phone:+79001000011",
            "email:client@example.com",
        }
        # Both open leads: one stays open, the other is closed as merged into it.
        open_leads = [x for x in merged["leads"] if x["open"]]
        assert len(open_leads) == 1
        assert len(merged["conversation_ids"]) == 2
        targets = {
            d["target"]["id"] async for d in c.svc.store.conversations.find({"contact_id": winner})
        }
        assert targets == {open_leads[0]["id"]}
        [closed] = [x for x in merged["leads"] if not x["open"]]
        status, err, _ = await c.call("POST", f"/leads/{closed['id']}/convert", ANNA, {})
        assert (status, err["code"]) == (409, "conflict")  # closed as merged: nothing to convert
        # A re-run (a retried request) changes nothing and writes no second audit record.
        status, again, _ = await c.call("POST", path, ANNA, {"other_id": second_contact})
        assert (status, again["contact"]["identities"]) == (200, merged["contact"]["identities"])
        [audit] = [a async for a in c.svc.store["contact_merges"].find({})]
        assert (audit["by"], audit["winner_id"], audit["loser_id"]) == (
            ANNA,
            winner,
            second_contact,
        )
        assert audit["loser"]["identities"] == ["email:client@example.com"]
        assert await c.svc.store.events.count_documents({"type": "contact.merged"}) == 1
        assert (await c.call("GET", f"/contacts/{second_contact}", ANNA))[0] == 404
        # The e-mail now finds the winner.
        status, body = await c.svc.client.post_api(api_body("m-3", email="client@example.com"))
        await c.svc.routed()
        msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert msg["contact_id"] == winner

        # Deleting frees the addresses: the next message starts a new contact.
        assert (await c.call("DELETE", f"/contacts/{winner}", ANNA))[0] == 403
        status, gone, _ = await c.call("DELETE", f"/contacts/{winner}", ADMIN)
        assert gone == {"id": winner, "deleted": True}
        status, body = await c.svc.client.post_api(api_body("m-4", phone="+79001000011"))
        await c.svc.routed()
        msg = await c.svc.store.messages.find_one({"_id": body["accepted"][0]})
        assert msg is not None
        assert msg["contact_id"] != winner


async def test_merge_interrupted_half_way_is_finished_by_running_it_again(
    mongo_uri: str, db_name: str
) -> None:
    async with crm(mongo_uri, db_name) as c:
        a = await c.lead_of("h-1", "+79001000021")
        b = await c.lead_of("h-2", "+79001000022")
        # The first run died after moving the identities off the loser.
        loser = await c.svc.store.contacts.find_one({"_id": b["contact_id"]})
        assert loser is not None
        await c.svc.store.contacts.update_one(
            {"_id": b["contact_id"]},
            {
                "$set": {
                    "merged_into": a["contact_id"],
                    "merged_identities": loser["identities"],
                    "identities": [f"merged:{b['contact_id']}"],
                }
            },
        )
        winner = await contacts.merge(c.svc.store, a["contact_id"], b["contact_id"], ANNA)
        assert set(winner["identities"]) == {"phone:+79001000021", "phone:+79001000022"}
        assert await c.svc.store.leads.count_documents({"contact_id": b["contact_id"]}) == 0


async def test_export_for_directors_only_and_only_what_they_see(
    mongo_uri: str, db_name: str
) -> None:
    async with crm(mongo_uri, db_name) as c:
        sales = await c.lead_of("e-1", "+79001000031")
        wholesale = await c.lead_of("e-2", "+79001000032", owner=OLGA)
        status, err, _ = await c.call("GET", "/export/leads", ANNA)
        assert (status, err["code"]) == (403, "forbidden")
        status, text, ctype = await c.call("GET", "/export/leads?format=csv", IVAN)
        assert (status, ctype) == (200, "text/csv")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert {r["id"] for r in rows} == {sales["_id"], wholesale["_id"]}  # sales + below
        assert {r["responsible_id"] for r in rows} == {ANNA, OLGA}
        status, data, ctype = await c.call("GET", "/export/contacts?format=json", IVAN)
        assert (status, ctype) == (200, "application/json")
        assert sorted(r["phones"] for r in data) == ["+79001000031", "+79001000032"]
        status, data, _ = await c.call("GET", "/export/leads?format=json", ADMIN)
        assert len(data) == 2
        assert (await c.call("GET", "/export/tasks", ADMIN))[0] == 404
        status, err, _ = await c.call("GET", "/export/leads?format=xml", IVAN)
        assert (status, err["errors"][0]["field"]) == (422, "format")


async def test_contacts_list_pages_detail_and_edit(mongo_uri: str, db_name: str) -> None:
    async with crm(mongo_uri, db_name) as c:
        leads = [await c.lead_of(f"c-{n}", f"+7900100004{n}") for n in range(3)]
        await c.lead_of("c-w", "+79001000049", owner=OLGA)
        ids: list[str] = []
        cursor: str | None = None
        for _ in range(3):
            query = "/contacts?limit=2" + (f"&cursor={cursor}" if cursor else "")
            status, page, _ = await c.call("GET", query, ANNA)
            assert status == 200, page
            ids += [x["id"] for x in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(ids) == sorted(x["contact_id"] for x in leads)  # not Olga's
        status, mine, _ = await c.call("GET", f"/contacts?responsible={DMITRY}", ANNA)
        assert mine["items"] == []
        status, err, _ = await c.call("GET", "/contacts?cursor=nonsense", ANNA)
        assert (status, err["errors"][0]["field"]) == (422, "cursor")

        lead = leads[0]
        await tasks.create(
            c.svc.store,
            {
                "_id": "t-1",
                "title": "Call back",
                "entity": {"kind": "lead", "id": lead["_id"]},
                "entity_id": lead["_id"],
                "contact_id": lead["contact_id"],
                "assignee_id": ANNA,
                "created_at": datetime.now(UTC),
            },
        )
        status, detail, _ = await c.call("GET", f"/leads/{lead['_id']}", ANNA)
        assert [t["title"] for t in detail["tasks"]] == ["Call back"]
        status, detail, _ = await c.call("GET", f"/contacts/{lead['contact_id']}", ANNA)
        assert status == 200
        assert (detail["contact"]["phones"], [x["id"] for x in detail["leads"]]) == (
            ["+79001000040"],
            [lead["_id"]],
        )
        assert len(detail["conversation_ids"]) == 1
        assert (await c.call("GET", f"/contacts/{lead['contact_id']}", OLGA))[0] == 404

        path = f"/contacts/{lead['contact_id']}"
        status, edited, _ = await c.call(
            "PATCH", path, ANNA, {"name": "Ms Client", "responsible_id": DMITRY}
        )
        assert (status, edited["name"], edited["responsible_id"]) == (200, "Ms Client", DMITRY)
        stored = await c.svc.store.contacts.find_one({"_id": lead["contact_id"]})
        assert stored is not None
        assert stored["name"] == "Ms Client"
        status, err, _ = await c.call("PATCH", path, ANNA, {"responsible_id": OLGA})
        assert (status, err["code"]) == (403, "forbidden")
        status, mine, _ = await c.call("GET", f"/contacts?responsible={DMITRY}&q=ms%20cl", ANNA)
        assert [x["id"] for x in mine["items"]] == [lead["contact_id"]]
        # Tasks follow a merge to the winner.
        other = leads[1]["contact_id"]
        status, _, _ = await c.call(
            "POST", f"/contacts/{other}/merge", ANNA, {"other_id": lead["contact_id"]}
        )
        assert status == 200
        task = await tasks.get(c.svc.store, "t-1")
        assert task is not None
        assert task["contact_id"] == other
