"""A deal's line items edited through the operator API (docs/documents.md "Line items"):
PATCH /deals/{id} ``items`` validated item by item (422 naming the item and key), stored
as the field ``items`` with a deal.field_changed event, and filling the contract's table."""

from __future__ import annotations

from typing import Any

from crm_store.documents import stable_id
from tests.test_documents import ANNA, NB, api, read_docx, seed_deal

ITEMS = [
    {"name": "Фасад «Милан»", "quantity": 3, "unit": "м²", "price": "12500.50"},
    {"name": "Доставка", "price": 1500},
]


async def test_items_patched_validated_and_in_the_document(mongo_uri: str, db_name: str) -> None:
    async with api(mongo_uri, db_name) as a:
        store = a.svc.store
        deal = await seed_deal(store, "Позиции")
        status, view = await a.call("PATCH", f"/deals/{deal}", ANNA, {"items": ITEMS})
        assert status == 200, view
        stored = (await store.deals.find_one({"_id": deal}) or {})["fields"]["items"]
        assert stored == [
            {"name": "Фасад «Милан»", "quantity": 3, "unit": "м²", "price": 12500.5},
            {"name": "Доставка", "quantity": 1, "unit": "шт.", "price": 1500},
        ]
        [changed] = [
            e async for e in store.events.find({"type": "deal.field_changed", "refs.deal_id": deal})
        ]
        assert "items" in changed["data"]["fields"]

        status, doc = await a.call(
            "POST", f"/deals/{deal}/documents", ANNA, {"type": "specification"}
        )
        assert status == 201, doc
        _, raw = await a.call("GET", f"/documents/{doc['id']}/file", ANNA)
        _, [table] = read_docx(raw)
        total = f"39{NB}001,50{NB}₽"
        assert table[1:] == [
            ["1", "Фасад «Милан»", "3", "м²", f"12{NB}500,50{NB}₽", f"37{NB}501,50{NB}₽"],
            ["2", "Доставка", "1", "шт.", f"1{NB}500,00{NB}₽", f"1{NB}500,00{NB}₽"],
            ["", "Итого", "", "", "", total],
        ]

        # Emptied with [].
        status, _ = await a.call("PATCH", f"/deals/{deal}", ANNA, {"items": []})
        assert status == 200
        assert (await store.deals.find_one({"_id": deal}) or {})["fields"]["items"] == []


BAD: list[tuple[Any, str]] = [
    ([{"name": "", "price": 1}], "items.0.name"),
    ([{"name": "x"}], "items.0.price"),
    ([{"name": "x", "price": -1}], "items.0.price"),
    ([{"name": "x", "price": "1.005"}], "items.0.price"),
    ([{"name": "x", "price": 1, "quantity": 0}], "items.0.quantity"),
    ([{"name": "x", "price": 1}, {"name": "y", "price": "abc"}], "items.1.price"),
    ([{"name": "x", "price": 1, "colour": "red"}], "items.0.colour"),
    ([{"name": "x", "price": 10**13}], "items.0.price"),
    (["not an item"], "items.0"),
    ({"name": "x", "price": 1}, "items"),
    ([{"name": "x", "price": 1}] * 501, "items"),
]


async def test_bad_items_are_refused_and_nothing_changes(mongo_uri: str, db_name: str) -> None:
    async with api(mongo_uri, db_name) as a:
        store = a.svc.store
        deal = await seed_deal(store, "Плохие позиции")
        before = await store.deals.find_one({"_id": deal})
        for items, field in BAD:
            status, err = await a.call("PATCH", f"/deals/{deal}", ANNA, {"items": items})
            assert status == 422, err
            assert field in [e["field"] for e in err["errors"]], err
        assert await store.deals.find_one({"_id": deal}) == before


async def test_a_lead_has_no_items(mongo_uri: str, db_name: str) -> None:
    async with api(mongo_uri, db_name) as a:
        lead = stable_id("lead", "items")
        await a.svc.store.leads.insert_one(
            {
                "_id": lead,
                "pipeline_id": "leads",
                "stage_id": "new",
                "open": True,
                "responsible_id": ANNA,
                "title": "Лид",
                "fields": {},
            }
        )
        status, err = await a.call(
            "PATCH", f"/leads/{lead}", ANNA, {"items": [{"name": "x", "price": 1}]}
        )
        assert (status, err["errors"][0]["field"]) == (422, "items"), err
