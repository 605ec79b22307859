"""Secrets and signatures as the Standard Webhooks specification says, through its authors' library
(standardwebhooks): `whsec_` + base64 secrets, HMAC-SHA256 over "id.timestamp.body", so receivers verify
with any off-the-shelf Standard Webhooks library. During a rotation's grace period the header carries a
signature by the old secret too (the spec allows several, space-separated)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import datetime

from standardwebhooks.webhooks import Webhook

SECRET_BYTES = 24  # the spec asks for 24 to 64 random bytes
ROTATION_GRACE_HOURS = 24  # how long the old secret keeps signing after a rotation


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature_header(secrets_: Iterable[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=timestamp, data=body) for s in secrets_)
