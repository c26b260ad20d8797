"""A FastAPI service over convthread: WhatsApp webhooks in, context snapshots out.

Run it (with ``pip install fastapi uvicorn``)::

    WHATSAPP_APP_SECRET=... WHATSAPP_VERIFY_TOKEN=... uvicorn examples.fastapi_app:app

What it shows:

* ``GET /webhooks/whatsapp`` answers Meta's subscription handshake;
* ``POST /webhooks/whatsapp`` checks the signature over the raw body, parses the
  envelope and records every result; a redelivery is a duplicate, not an error;
* the library's errors map to HTTP answers: a bad signature is 403, a malformed payload
  400, a thread that stayed busy through every retry (:class:`~convthread.Contention`)
  503 with ``Retry-After`` so the provider delivers again;
* ``GET /threads/{thread_id}/snapshot`` returns a snapshot's JSON. A ``Snapshot`` is a
  msgspec struct, not a pydantic model, so it cannot be a ``response_model``: the route
  answers the bytes of ``Snapshot.to_json()`` and the OpenAPI document carries the
  snapshot's published JSON Schema, taken from msgspec.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from convthread import AsyncConversations, Contention, Snapshot
from convthread.channels import whatsapp
from convthread.errors import NotFound, SignatureError, ValidationError

_REF = "#/components/schemas/{name}"
(_SNAPSHOT_SCHEMA,), _COMPONENTS = msgspec.json.schema_components([Snapshot], ref_template=_REF)


def create_app(
    store: str = "sqlite:///support.db", *, app_secret: bytes, verify_token: str
) -> FastAPI:
    """The service, over ``store`` (a URL or a store)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncConversations(store) as convs:
            app.state.convs = convs
            yield

    app = FastAPI(title="support", lifespan=lifespan)

    @app.exception_handler(Contention)
    async def busy(request: Request, exc: Contention) -> Response:
        retry = str(max(1, math.ceil(exc.retry_after)))
        return JSONResponse(
            {"detail": "busy, retry"}, status_code=503, headers={"Retry-After": retry}
        )

    @app.exception_handler(SignatureError)
    async def forbidden(request: Request, exc: SignatureError) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(ValidationError)
    async def bad_request(request: Request, exc: ValidationError) -> Response:
        # ParseError (a malformed payload) is a ValidationError too
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/webhooks/whatsapp", response_class=PlainTextResponse)
    async def handshake(request: Request) -> str:
        return whatsapp.verify_subscription(str(request.url.query), verify_token)

    @app.post("/webhooks/whatsapp")
    async def webhook(request: Request) -> dict[str, Any]:
        body = await request.body()
        whatsapp.verify_signature(body, request.headers.get("x-hub-signature-256"), app_secret)
        convs: AsyncConversations = request.app.state.convs
        recorded = []
        for result in whatsapp.parse(body):
            done = await convs.apply(result)
            recorded.append(
                {"kind": done.kind, "outcome": done.outcome, "thread_id": done.thread_id}
            )
        return {"recorded": recorded}

    @app.get(
        "/threads/{thread_id}/snapshot",
        response_class=Response,
        responses={200: {"content": {"application/json": {"schema": _SNAPSHOT_SCHEMA}}}},
    )
    async def snapshot(request: Request, thread_id: str, audience: str = "agent") -> Response:
        convs: AsyncConversations = request.app.state.convs
        snap = await convs.snapshot(thread_id, audience=audience)
        return Response(snap.to_json(), media_type="application/json")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _from_environment() -> FastAPI:
    return create_app(
        os.environ.get("CONVTHREAD_STORE", "sqlite:///support.db"),
        app_secret=os.environ.get("WHATSAPP_APP_SECRET", "").encode(),
        verify_token=os.environ.get("WHATSAPP_VERIFY_TOKEN", ""),
    )


#: for ``uvicorn examples.fastapi_app:app``; without an app secret every webhook is refused
app = _from_environment()
