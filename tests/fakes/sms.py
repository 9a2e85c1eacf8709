"""Local fakes of the SMS.ru and SMSC.ru HTTP APIs on a loopback port.

They speak what CHANNEL_PROTOCOLS.md §12 describes:

* SMS.ru: ``POST /sms/send`` (form: ``api_id``, ``to``, ``msg``, ``json=1``, ``from``)
  answering per number (``sms.{phone}.{status, status_code, sms_id | status_text}``), and
  ``GET /sms/status?api_id&sms_id=a,b&json=1``; a bad ``api_id`` is request error 200,
  an unapproved sender 204; :meth:`FakeSmsRu.callback` POSTs the ``data[]`` form the
  service's callback URL gets.
* SMSC.ru: ``/sys/send.php`` (``login``/``psw``, ``phones``, ``mes``, ``id``, ``sender``,
  ``charset``, ``fmt=3``) answering ``{"id", "cnt"}`` or ``{"error", "error_code"}``, and
  ``/sys/status.php?id&phone&fmt=3`` answering ``{"status", "err", "last_timestamp"}`` or
  status −3 (not found); :meth:`FakeSmsc.callback` posts a status like SMSC's handler URL.

Every request is recorded exactly as received (:attr:`requests`), and every SMS the fake
"sent" is in :attr:`texts`. :meth:`fail_next` queues one failure for the next send: an
error code, an HTTP status, or ``cut=True`` — the SMS is taken and sent, then the
connection is closed before the answer (a lost answer).
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from tests.helpers import free_port


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass(frozen=True)
class Failure:
    code: int | None = None
    http_status: int = 200
    cut: bool = False
    text: str = ""


@dataclass(frozen=True)
class Texted:
    """An SMS the fake accepted."""

    id: str
    phone: str
    text: str
    sender: str | None


@dataclass
class _Fake:
    requests: list[Recorded] = field(default_factory=list)
    texts: list[Texted] = field(default_factory=list)
    # provider id → delivery status code (the provider's own numbers).
    statuses: dict[str, int] = field(default_factory=dict)
    _failures: deque[Failure] = field(default_factory=deque)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(
        self, *, code: int | None = None, http_status: int = 200, cut: bool = False, text: str = ""
    ) -> None:
        self._failures.append(Failure(code, http_status, cut, text))

    def sends(self) -> list[Recorded]:
        raise NotImplementedError

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def __aenter__(self) -> _Fake:
        app = web.Application()
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Recorded:
        rec = Recorded(request.method, request.path, dict(request.query), await request.read())
        self.requests.append(rec)
        return rec

    @staticmethod
    def _cut(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response(status=200)


@dataclass
class FakeSmsRu(_Fake):
    api_id: str = ""
    # Approved sender names (an unapproved one: error 204).
    senders: tuple[str, ...] = ()
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(10000000))

    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/sms/send"]

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/sms/send", self._send), web.get("/sms/status", self._status)]

    async def _send(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        form = rec.form
        if form.get("api_id") != self.api_id:
            return _json(
                {"status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"}
            )
        sender = form.get("from")
        if sender is not None and sender not in self.senders:
            return _json(
                {"status": "ERROR", "status_code": 204, "status_text": "Отправитель не согласован"}
            )
        failure = self._failures.popleft() if self._failures else None
        phone = form.get("to", "")
        if failure is not None and failure.http_status != 200:
            return web.Response(status=failure.http_status, text="Internal Server Error")
        if failure is not None and failure.code is not None:
            if failure.code in (220, 300):  # request-level errors
                return _json(
                    {"status": "ERROR", "status_code": failure.code, "status_text": failure.text}
                )
            return _json(
                {
                    "status": "OK",
                    "status_code": 100,
                    "balance": 4122.56,
                    "sms": {
                        phone: {
                            "status": "ERROR",
                            "status_code": failure.code,
                            "status_text": failure.text or "На этот номер нет маршрута",
                        }
                    },
                }
            )
        sms_id = f"000000-{next(self._ids)}"
        self.texts.append(Texted(sms_id, phone, form.get("msg", ""), sender))
        self.statuses[sms_id] = 100
        if failure is not None and failure.cut:
            return self._cut(request)
        return _json(
            {
                "status": "OK",
                "status_code": 100,
                "balance": 4122.56,
                "sms": {phone: {"status": "OK", "status_code": 100, "sms_id": sms_id}},
            }
        )

    async def _status(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if rec.query.get("api_id") != self.api_id:
            return _json({"status": "ERROR", "status_code": 200})
        out: dict[str, Any] = {}
        for sms_id in rec.query.get("sms_id", "").split(","):
            code = self.statuses.get(sms_id)
            out[sms_id] = (
                {"status": "OK", "status_code": code, "cost": "2.50", "sms": 1}
                if code is not None
                else {"status": "ERROR", "status_code": -1, "status_text": "Не найдено"}
            )
        return _json({"status": "OK", "status_code": 100, "sms": out, "balance": 4120.06})

    @staticmethod
    async def callback(
        http: aiohttp.ClientSession, url: str, records: list[tuple[str, int, int | None]]
    ) -> tuple[int, str]:
        """POST SMS.ru's callback form: ``data[i]`` = ``sms_status\\n<id>\\n<code>[\\n<ts>]``
        (plus one record of another type, which must be skipped)."""
        pairs = [("data[0]", "test\n1700000000")]
        for i, (sms_id, code, ts) in enumerate(records, start=1):
            lines = ["sms_status", sms_id, str(code)] + ([str(ts)] if ts is not None else [])
            pairs.append((f"data[{i}]", "\n".join(lines)))
        body = urllib.parse.urlencode(pairs)
        async with http.post(
            url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ) as resp:
            return resp.status, await resp.text()


@dataclass
class FakeSmsc(_Fake):
    login: str = ""
    password: str = ""
    # Our id → the phone it was sent to (status.php looks up by both).
    by_client_id: dict[str, str] = field(default_factory=dict)

    def sends(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/sys/send.php"]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/sys/send.php", self._send),
            web.get("/sys/status.php", self._status),
        ]

    async def _send(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        form = rec.form
        if (form.get("login"), form.get("psw")) != (self.login, self.password):
            return _json({"error": "authorise error", "error_code": 2})
        failure = self._failures.popleft() if self._failures else None
        if failure is not None and failure.http_status != 200:
            return web.Response(status=failure.http_status, text="Bad Gateway")
        if failure is not None and failure.code is not None:
            return _json({"error": failure.text or "error", "error_code": failure.code})
        client_id = form.get("id", "")
        phone = form.get("phones", "")
        self.texts.append(Texted(client_id, phone, form.get("mes", ""), form.get("sender")))
        self.by_client_id[client_id] = phone
        self.statuses[client_id] = -1
        if failure is not None and failure.cut:
            return self._cut(request)
        return _json({"id": client_id, "cnt": 1})

    async def _status(self, request: web.Request) -> web.Response:
        rec = await self._record(request)
        if (rec.query.get("login"), rec.query.get("psw")) != (self.login, self.password):
            return _json({"error": "authorise error", "error_code": 2})
        ids = rec.query.get("id", "").split(",")
        phones = rec.query.get("phone", "").split(",")
        rows: list[dict[str, Any]] = []
        for client_id, phone in zip(ids, phones, strict=False):
            if self.by_client_id.get(client_id) != phone:
                rows.append({"status": -3, "last_date": "", "last_timestamp": 0, "err": 0})
                continue
            code = self.statuses[client_id]
            rows.append(
                {
                    "status": code,
                    "last_date": "07.12.2026 10:15:00",
                    "last_timestamp": 1796638500,
                    "err": 20 if code == 20 else 0,
                }
            )
        return _json(rows[0] if len(rows) == 1 else rows)

    @staticmethod
    async def callback(
        http: aiohttp.ClientSession, url: str, fields: dict[str, str]
    ) -> tuple[int, str]:
        """POST a status form like SMSC's handler URL gets."""
        async with http.post(url, data=fields) as resp:
            return resp.status, await resp.text()


def _json(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")
