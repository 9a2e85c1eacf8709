"""A contact's custom fields: PATCH /api/v1/contacts/{id} ``{"fields": {...}}`` sets scalar
values (null removes one, the others are kept), the contact's view shows them, bad input is
a 4xx that changes nothing, and an operator who cannot see the contact cannot set them
(the eco-goods wholesaler's «Является ЛПР»)."""

from __future__ import annotations

from typing import Any

from tests.automation_support import robots

ADMIN = "sergey.volkov"


async def test_contact_fields_set_shown_removed_and_refused(mongo_uri: str, db_name: str) -> None:
    async with robots(mongo_uri, db_name) as r:
        lead = await r.lead_from("cf-1", "+79008880401", "Марина")
        contact_id = lead["contact_id"]
        url = f"/api/v1/contacts/{contact_id}"

        status, view = await r.api(
            "PATCH", url, ADMIN, {"fields": {"is_decision_maker": True, "position": "Закупщик"}}
        )
        assert status == 200, view
        assert view["fields"] == {"is_decision_maker": True, "position": "Закупщик"}
        status, view = await r.api(
            "PATCH", url, ADMIN, {"fields": {"position": None, "orders_per_year": 12}}
        )
        assert status == 200, view
        assert view["fields"] == {"is_decision_maker": True, "orders_per_year": 12}
        status, detail = await r.api("GET", url, ADMIN)
        assert status == 200
        assert detail["contact"]["fields"] == {"is_decision_maker": True, "orders_per_year": 12}

        bad: list[dict[str, Any]] = [
            {"fields": {"nested": {"a": 1}}},
            {"fields": {"list": [1, 2]}},
            {"fields": {"Bad Name": 1}},
            {"fields": {"long": "x" * 1001}},
            {"fields": {f"f{i}": i for i in range(51)}},
        ]
        for body in bad:
            status, problem = await r.api("PATCH", url, ADMIN, body)
            assert status == 422, (body, problem)
        # 49 more would make 51 with the two kept: refused as a whole.
        status, problem = await r.api(
            "PATCH", url, ADMIN, {"fields": {f"f{i}": i for i in range(49)}}
        )
        assert (status, problem.get("code")) == (422, "too_many_fields"), problem
        # Someone who cannot see the contact (another department) cannot set its fields.
        status, _ = await r.api("PATCH", url, "nikolai.sidorov", {"fields": {"x": 1}})
        assert status == 404
        stored = await r.store.contacts.find_one({"_id": contact_id})
        assert stored["fields"] == {"is_decision_maker": True, "orders_per_year": 12}
