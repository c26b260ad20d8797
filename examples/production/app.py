"""The FastAPI application: webhooks in, snapshots out, errors as HTTP answers.

Routes:

* ``POST /webhooks/twilio/sms`` and ``POST /webhooks/twilio/voice``: Twilio's form
  webhooks, ``X-Twilio-Signature`` checked over the public URL and the form fields;
  answered with TwiML.
* ``GET /webhooks/whatsapp``: Meta's subscription handshake; ``POST /webhooks/whatsapp``:
  ``X-Hub-Signature-256`` checked over the raw body, then every message and status of
  the envelope recorded.
* ``GET /threads/{thread_id}/snapshot``: a thread's context snapshot for an audience,
  the bytes of ``Snapshot.to_json()``, described in the OpenAPI document by the
  snapshot's published JSON Schema.

Errors (the same mapping for every route, see docs/production.md): a malformed payload
or bad parameter is 400, a signature that does not verify 403, an unknown thread 404, a
provider message id redelivered with a different payload 409, a thread that stayed busy
through every retry, a database that cannot be reached, or a request over its time budget
503 with ``Retry-After``, so the provider delivers again and the redelivery is stored once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Annotated, Any, TypeVar
from xml.sax.saxutils import quoteattr

import msgspec
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from convthread import AsyncConversations, Contention, Snapshot
from convthread.channels import sms, voice, whatsapp
from convthread.domain.updates import ChannelResult
from convthread.errors import (
    IdempotencyError,
    NotFound,
    SignatureError,
    StoreUnavailable,
    ValidationError,
)

from .settings import Settings

__all__ = ["create_app", "from_environment", "public_url"]

T = TypeVar("T")

_REF = "#/components/schemas/{name}"
(_SNAPSHOT_SCHEMA,), _COMPONENTS = msgspec.json.schema_components([Snapshot], ref_template=_REF)
_TWIML = "application/xml"
_EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class Problem(BaseModel):
    """The body of every error answer."""

    detail: str


class Recorded(BaseModel):
    """One result of a webhook: what it was, what happened, where it went."""

    kind: str
    outcome: str
    thread_id: str | None = None


class WebhookAnswer(BaseModel):
    recorded: list[Recorded]


class Audience(str, Enum):
    """Who reads the snapshot: an internal agent, or an external bot vendor (redacted)."""

    agent = "agent"
    bot_vendor = "bot_vendor"


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "malformed payload or parameter"},
    403: {"model": Problem, "description": "the signature does not verify"},
    409: {"model": Problem, "description": "a message id reused with a different payload"},
    503: {
        "model": Problem,
        "description": "busy: deliver again after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def public_url(request: Request, settings: Settings) -> str:
    """The URL the provider called, which its signature covers: the configured public
    base, else the proxy's ``X-Forwarded-Proto``/``X-Forwarded-Host`` when trusted, else
    the request's own URL."""
    path = request.url.path
    query = f"?{request.url.query}" if request.url.query else ""
    if settings.public_url:
        return settings.public_url.rstrip("/") + path + query
    if settings.trust_forwarded:

        def first(name: str) -> str:
            return request.headers.get(name, "").split(",")[0].strip()

        scheme = first("x-forwarded-proto") or request.url.scheme
        host = first("x-forwarded-host") or request.headers.get("host", request.url.netloc)
        return f"{scheme}://{host}{path}{query}"
    return str(request.url)


def create_app(settings: Settings) -> FastAPI:
    """The service for ``settings``; the store opens in the lifespan and closes with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncConversations(settings.store) as convs:
            app.state.convs = convs
            yield

    app = FastAPI(title="support", version="1", lifespan=lifespan)

    # -- errors: the most specific handler wins (SignatureError is a ValidationError)

    @app.exception_handler(SignatureError)
    async def forbidden(request: Request, exc: SignatureError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(ValidationError)
    async def bad_payload(request: Request, exc: ValidationError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> Response:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"detail": errors}, status_code=400)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(IdempotencyError)
    async def conflict(request: Request, exc: IdempotencyError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Contention)
    async def busy(request: Request, exc: Contention) -> Response:
        return JSONResponse(
            {"detail": "busy, deliver again"},
            status_code=503,
            headers=_retry_after(exc.retry_after),
        )

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> Response:
        # The database cannot be reached (a failover, a restart): nothing uncommitted
        # remains, and a redelivery is stored once, so ask for one.
        return JSONResponse(
            {"detail": "storage unavailable, deliver again"},
            status_code=503,
            headers=_retry_after(5),
        )

    @app.exception_handler(asyncio.TimeoutError)
    async def too_slow(request: Request, exc: asyncio.TimeoutError) -> Response:
        return JSONResponse(
            {"detail": "the request ran out of time, deliver again"},
            status_code=503,
            headers=_retry_after(1),
        )

    async def within_budget(work: Awaitable[T]) -> T:
        # A webhook answered late is delivered again anyway: answer 503 in time instead.
        # What was committed stays committed; the redelivery is then a duplicate.
        return await asyncio.wait_for(work, settings.request_timeout)

    async def record(request: Request, results: Iterable[ChannelResult]) -> WebhookAnswer:
        convs: AsyncConversations = request.app.state.convs
        recorded = []
        for result in results:
            try:
                done = await within_budget(convs.apply(result))
            except NotFound:
                # A reaction, edit or deletion of a message this store never saw (sent
                # before the integration started): acknowledged, or the provider would
                # deliver it again for days. Statuses of unknown messages are held.
                tag = type(result).__struct_config__.tag
                recorded.append(Recorded(kind=str(tag or "inbound"), outcome="not_found"))
                continue
            recorded.append(
                Recorded(kind=done.kind, outcome=done.outcome, thread_id=done.thread_id)
            )
        return WebhookAnswer(recorded=recorded)

    # -- Twilio

    async def twilio_form(request: Request, channel: str) -> bytes:
        body = await request.body()
        sms.verify_signature(
            public_url(request, settings),
            body,
            request.headers.get("x-twilio-signature"),
            settings.twilio_auth_token,
            channel=channel,
        )
        return body

    @app.post(
        "/webhooks/twilio/sms",
        response_class=Response,
        responses={200: {"content": {_TWIML: {}}}, **_ERRORS},
    )
    async def twilio_sms(request: Request) -> Response:
        body = await twilio_form(request, "sms")
        await record(request, sms.parse(body))
        return Response(_EMPTY_TWIML, media_type=_TWIML)  # no automatic reply

    @app.post(
        "/webhooks/twilio/voice",
        response_class=Response,
        responses={200: {"content": {_TWIML: {}}}, **_ERRORS},
    )
    async def twilio_voice(request: Request) -> Response:
        body = await twilio_form(request, "voice")
        answer = await record(request, voice.parse(body))
        spoken = any(r.kind == "inbound" and r.outcome == "ingested" for r in answer.recorded)
        say = (
            "Thank you. An agent will be with you shortly."
            if spoken or b"SpeechResult" in body
            else "Hello. Please tell us how we can help you."
        )
        # The caller's answer comes back here: the public URL, which Twilio signs.
        action = quoteattr(public_url(request, settings).split("?", 1)[0])
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response>'
            f'<Gather input="speech" action={action} method="POST"><Say>{say}</Say></Gather>'
            "</Response>"
        )
        return Response(twiml, media_type=_TWIML)

    # -- WhatsApp

    @app.get("/webhooks/whatsapp", response_class=PlainTextResponse, responses=_ERRORS)
    async def whatsapp_handshake(request: Request) -> str:
        return whatsapp.verify_subscription(str(request.url.query), settings.whatsapp_verify_token)

    @app.post("/webhooks/whatsapp", responses=_ERRORS)
    async def whatsapp_webhook(request: Request) -> WebhookAnswer:
        body = await request.body()
        whatsapp.verify_signature(
            body, request.headers.get("x-hub-signature-256"), settings.whatsapp_app_secret
        )
        return await record(request, whatsapp.parse(body))

    # -- reads

    @app.get(
        "/threads/{thread_id}/snapshot",
        response_class=Response,
        responses={
            200: {"content": {"application/json": {"schema": _SNAPSHOT_SCHEMA}}},
            400: _ERRORS[400],
            404: {"model": Problem, "description": "no such thread"},
        },
    )
    async def snapshot(
        request: Request,
        thread_id: str,
        audience: Audience = Audience.agent,
        max_messages: Annotated[int, Query(ge=1, le=50)] = 20,
    ) -> Response:
        convs: AsyncConversations = request.app.state.convs
        snap = await within_budget(
            convs.snapshot(thread_id, audience=audience.value, max_messages=max_messages)
        )
        return Response(snap.to_json(), media_type="application/json")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            # Parameter errors are answered 400 (above), not FastAPI's default 422.
            for item in schema.get("paths", {}).values():
                for operation in item.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            components.update(_COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def from_environment() -> FastAPI:
    """The app as ``uvicorn --factory examples.production.app:from_environment`` runs it."""
    return create_app(Settings.from_environment())
