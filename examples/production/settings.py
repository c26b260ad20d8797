"""The service's configuration, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """What the service needs to know about where it runs.

    ``public_url`` is the scheme, host and path prefix the providers call
    (``https://support.example.com``): Twilio signs the URL it requested, which behind a
    proxy is not the one the application sees. Without it, ``trust_forwarded`` takes the
    scheme and host from the proxy's ``X-Forwarded-Proto`` and ``X-Forwarded-Host``
    (only set it when every request comes through a proxy that overwrites them); with
    neither, the request's own URL is used (no proxy).
    """

    store: str = "sqlite:///support.db"
    public_url: str = ""
    trust_forwarded: bool = False
    twilio_auth_token: str = ""
    whatsapp_app_secret: bytes = b""
    whatsapp_verify_token: str = ""
    #: seconds a webhook may take before it is answered 503 (providers time out at ~15s)
    request_timeout: float = 10.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            store=env.get("CONVTHREAD_STORE", cls.store),
            public_url=env.get("PUBLIC_URL", ""),
            trust_forwarded=env.get("TRUST_FORWARDED", "").lower() in ("1", "true", "yes"),
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN", ""),
            whatsapp_app_secret=env.get("WHATSAPP_APP_SECRET", "").encode(),
            whatsapp_verify_token=env.get("WHATSAPP_VERIFY_TOKEN", ""),
            request_timeout=float(env.get("REQUEST_TIMEOUT", cls.request_timeout)),
        )
