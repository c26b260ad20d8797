"""A production-shaped FastAPI service over convthread (see docs/production.md).

Run it behind your proxy with the settings in the environment::

    CONVTHREAD_STORE=postgresql://app@db/support \\
    PUBLIC_URL=https://support.example.com \\
    TWILIO_AUTH_TOKEN=... WHATSAPP_APP_SECRET=... WHATSAPP_VERIFY_TOKEN=... \\
    uvicorn --factory examples.production.app:from_environment --host 0.0.0.0

``settings`` reads the configuration, ``app`` builds the service: Twilio SMS and voice
and WhatsApp webhooks with signature checks, the WhatsApp handshake, the library's errors
mapped to HTTP answers, and a snapshot endpoint with its JSON Schema in the OpenAPI
document.
"""

from .app import create_app, from_environment
from .settings import Settings

__all__ = ["Settings", "create_app", "from_environment"]
