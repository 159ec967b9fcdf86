"""Notification email: members choose which events email them
(:mod:`conveyor.store.email_preferences`); :class:`EmailDispatch` turns events into
``email.send`` jobs; the kind (:func:`register`) renders the templates shipped in
``templates/`` and sends over SMTP, or writes each mail to the log when no SMTP server is
set. Other parts send mail by enqueueing ``email.send`` with the payload of
:mod:`conveyor.notify.email.payload`."""

from conveyor.notify.email.dispatch import EmailDispatch
from conveyor.notify.email.kind import KIND, QUEUE, email_kind_spec, register
from conveyor.notify.email.payload import EmailJob, Template

__all__ = ["KIND", "QUEUE", "EmailDispatch", "EmailJob", "Template", "email_kind_spec", "register"]
