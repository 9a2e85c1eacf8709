"""Users and tokens over HTTP: who am I, whom may I see, the admin creating and changing
users (a role change applies to the next request, deactivation locks the user out),
tokens issued once and revoked; changes made in one process reach another."""

from __future__ import annotations

from typing import Any

import orjson

from crm_store import tokens
from crm_store.users import REFRESH_S
from tests.helpers import wait_for
from tests.service import InProcess, in_process
from tests.test_cli import arun, cli_env

ANNA, OLGA, IVAN, ADMIN = "anna.smirnova", "olga.ivanova", "ivan.petrov", "sergey.volkov"


async def api(
    svc: InProcess, method: str, path: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    async with svc.client.http.request(
        method, f"{svc.client.base}/api/v1{path}", data=data, headers=headers
    ) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_me_and_the_users_one_may_see(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        t = {u: (await tokens.issue(svc.store, u))[0] for u in (ANNA, OLGA, IVAN, ADMIN)}
        status, me = await api(svc, "GET", "/me", t[IVAN])
        assert status == 200
        assert (me["role"], me["departments"], me["may_export"]) == (
            "director",
            ["sales", "wholesale"],
            True,
        )
        assert (await api(svc, "GET", "/me", t[ANNA]))[1]["may_delete"] is False
        assert (await api(svc, "GET", "/me", t[ADMIN]))[1]["departments"] is None
        status, users = await api(svc, "GET", "/users", t[OLGA])
        assert {u["id"] for u in users["items"]} == {OLGA}
        status, users = await api(svc, "GET", "/users", t[ANNA])
        assert {u["department"] for u in users["items"]} == {"sales"}
        assert (await api(svc, "GET", f"/users/{ANNA}", t[OLGA]))[0] == 404
        assert (await api(svc, "GET", f"/users/{ANNA}", t[IVAN]))[1]["managed_by"] == "config"


async def test_admin_manages_users_and_tokens(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)
        anna, _ = await tokens.issue(svc.store, ANNA)
        new = {"id": "pavel.sokolov", "name": "Pavel Sokolov", "role": "manager"}
        status, err = await api(svc, "POST", "/users", anna, {**new, "department": "sales"})
        assert (status, err["code"]) == (403, "forbidden")
        status, err = await api(svc, "POST", "/users", admin, {**new, "department": "nowhere"})
        assert (status, err["errors"][0]["field"]) == (422, "department")
        status, err = await api(
            svc, "POST", "/users", admin, {**new, "department": "sales", "x": 1}
        )
        assert (status, err["errors"][0]["field"]) == (422, "x")
        body = {**new, "department": "sales", "lines": ["sales"]}
        status, made = await api(svc, "POST", "/users", admin, body)
        assert (status, made["managed_by"], made["lines"]) == (201, "api", ["sales"])
        assert (await api(svc, "POST", "/users", admin, body))[0] == 409
        # The new user's token works at once; routing's round robin knows him.
        status, issued = await api(
            svc, "POST", "/users/pavel.sokolov/tokens", admin, {"name": "web"}
        )
        assert status == 201
        assert issued["token"].startswith("omr_")
        pavel = issued["token"]
        assert (await api(svc, "GET", "/me", pavel))[1]["department"] == "sales"
        assert "pavel.sokolov" in [u.id for u in svc.service.config.line_users("sales")]
        stored = await svc.store["api_tokens"].find_one({"token_id": issued["token_id"]})
        assert stored is not None
        assert pavel not in orjson.dumps(stored).decode()  # only the hash is kept

        # A role change applies to the next request.
        status, changed = await api(
            svc, "PATCH", "/users/pavel.sokolov", admin, {"role": "director"}
        )
        assert (status, changed["role"]) == (200, "director")
        assert (await api(svc, "GET", "/me", pavel))[1]["may_export"] is True
        # A YAML user can be changed too (the stored record wins).
        status, changed = await api(svc, "PATCH", f"/users/{ANNA}", admin, {"lines": []})
        assert (status, changed["managed_by"]) == (200, "api")
        assert ANNA not in [u.id for u in svc.service.config.line_users("sales")]
        # Deactivated: locked out.
        await api(svc, "PATCH", "/users/pavel.sokolov", admin, {"active": False})
        assert (await api(svc, "GET", "/me", pavel))[0] == 401

        status, listed = await api(svc, "GET", "/users/pavel.sokolov/tokens", admin)
        assert [x["token_id"] for x in listed["items"]] == [issued["token_id"]]
        assert "token" not in listed["items"][0]
        status, gone = await api(svc, "DELETE", f"/tokens/{issued['token_id']}", admin)
        assert gone == {"token_id": issued["token_id"], "revoked": True}
        assert (await api(svc, "DELETE", f"/tokens/{issued['token_id']}", admin))[0] == 404


async def test_a_user_created_in_one_process_reaches_another(mongo_uri: str, db_name: str) -> None:
    async with in_process(mongo_uri, db_name) as one, in_process(mongo_uri, db_name) as two:
        assert one.service.config is not two.service.config  # two separate directories
        admin, _ = await tokens.issue(one.store, ADMIN)
        body = {"id": "lena.k", "name": "Lena", "role": "manager", "department": "wholesale"}
        assert (await api(one, "POST", "/users", admin, body))[0] == 201
        token, _ = await tokens.issue(one.store, "lena.k")

        async def known() -> bool:
            status, _ = await api(two, "GET", "/me", token)
            return status == 200

        await wait_for(known, timeout=REFRESH_S * 3, message="the other process never learnt")


async def test_the_tokens_command_issues_lists_and_revokes(mongo_uri: str, db_name: str) -> None:
    env = cli_env(OMNIROUTE_MONGODB_URI=mongo_uri, OMNIROUTE_DB_NAME=db_name)
    async with in_process(mongo_uri, db_name) as svc:
        admin, _ = await tokens.issue(svc.store, ADMIN)
        body = {"id": "lena.k", "name": "Lena", "role": "manager", "department": "wholesale"}
        assert (await api(svc, "POST", "/users", admin, body))[0] == 201
        unknown = await arun("tokens", "issue", "--user", "nobody.here", env=env)
        assert unknown.code == 1
        assert "no user" in unknown.err
        # A user created through the API gets a token from the command too.
        issued = await arun("tokens", "issue", "--user", "lena.k", "--name", "laptop", env=env)
        assert issued.code == 0, issued.err
        token = issued.out.strip().splitlines()[-1]
        token_id = issued.out.split()[2]
        status, me = await api(svc, "GET", "/me", token)
        assert (status, me["id"]) == (200, "lena.k")
        listed = await arun("tokens", "list", "--user", "lena.k", env=env)
        assert listed.code == 0
        assert token_id in listed.out
        assert "laptop" in listed.out
        assert token not in listed.out
        revoked = await arun("tokens", "revoke", token_id, env=env)
        assert revoked.code == 0, revoked.err
        assert (await api(svc, "GET", "/me", token))[0] == 401
        assert (await arun("tokens", "revoke", token_id, env=env)).code == 1
