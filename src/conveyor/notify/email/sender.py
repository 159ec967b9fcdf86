"""Where mail goes: an SMTP server (aiosmtplib) from the settings, or, with no
``CONVEYOR_SMTP_HOST``, the structured log (so ``make run`` shows what it would send).

A sender raises :class:`PermanentRefusal` when the server refused the mail with a 5xx
reply (sending it again would be refused again); any other failure (a 4xx reply, a
connection that failed or timed out) is temporary, and the job's retry sends it again.
"""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from conveyor.config import Settings
from conveyor.logs import get_logger

log = get_logger("email")


class PermanentRefusal(Exception):
    """The SMTP server refused the mail for good (a 5xx reply)."""


class Sender(Protocol):
    """Delivers one message."""

    async def send(self, message: EmailMessage) -> None: ...


class SmtpSender:
    """Sends over SMTP: ``smtp_security`` ``starttls`` (upgrade on connect, required),
    ``tls`` (implicit TLS, port 465) or ``none`` (plain, for local relays)."""

    def __init__(self, settings: Settings) -> None:
        if settings.smtp_host is None:
            raise ValueError("SmtpSender needs CONVEYOR_SMTP_HOST; without it use LogSender")
        self._settings = settings
        self._host = settings.smtp_host

    @property
    def server(self) -> str:
        return f"{self._host}:{self._settings.smtp_port}"

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=self._host,
                port=s.smtp_port,
                username=s.smtp_username,
                password=s.smtp_password,
                use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls",
                timeout=s.smtp_timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            failure = f"SMTP server {self.server} refused recipient(s): {detail}"
            if all(500 <= code < 600 for code in codes):
                raise PermanentRefusal(f"{failure}; fix the address") from exc
            raise ConnectionError(failure) from exc
        except aiosmtplib.SMTPResponseException as exc:
            failure = f"SMTP server {self.server} answered {exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                raise PermanentRefusal(
                    f"{failure}; check CONVEYOR_EMAIL_FROM and the SMTP credentials"
                ) from exc
            raise ConnectionError(failure) from exc
        except aiosmtplib.SMTPException as exc:
            raise ConnectionError(f"SMTP server {self.server}: {exc}") from exc


class LogSender:
    """Writes each mail (to, subject, text) to the log instead of sending it."""

    async def send(self, message: EmailMessage) -> None:
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if isinstance(body, EmailMessage) else ""
        log.info(
            "email not sent (no CONVEYOR_SMTP_HOST): logged instead",
            to=message["To"],
            subject=message["Subject"],
            list_unsubscribe=message["List-Unsubscribe"],
            text=text,
        )


def sender_from(settings: Settings) -> Sender:
    """The SMTP sender when ``smtp_host`` is set, else the log sender."""
    if settings.smtp_host is None:
        return LogSender()
    return SmtpSender(settings)
