"""Webhook signatures per the Standard Webhooks specification (standardwebhooks.com), so
receivers verify them with that specification's libraries in any language.

A secret is ``whsec_`` + base64 of its key bytes. A message is signed as
``base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"))`` and sent with
three headers: ``webhook-id`` (the same on every attempt of one message),
``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,<signature>``; several, space-separated, while a rotated endpoint's previous
secret still signs, so a receiver holding either secret verifies it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
"""Key bytes of a new secret; the specification asks for 24 to 64."""


def new_secret() -> str:
    """A new random signing secret (``whsec_…``)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} + base64: {exc}") from exc


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of one message with one secret."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secrets_: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with each of ``secrets_``
    (the current secret first)."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, message_id, timestamp, body) for s in secrets_),
        "content-type": "application/json",
    }
