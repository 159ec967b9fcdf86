"""From events to ``email.send`` jobs: the members whose preferences choose an event get
one job each (the lead's dispatcher enqueues them as it moves its cursor)."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.config import Settings
from conveyor.notify.email.kind import QUEUE, email_kind_spec
from conveyor.notify.email.payload import JobEventContext, Template
from conveyor.store.email_preferences import EmailPreferenceStore
from conveyor.store.records import Event, NewJob

SILENT_QUEUES = frozenset({QUEUE, "webhooks"})
"""Events of Conveyor's own delivery jobs email nobody: a member who chose every kind
would otherwise be mailed about each mail sent (without end) and each webhook delivery."""


class EmailDispatch:
    """Turns events into the ``email.send`` jobs their recipients chose."""

    def __init__(self, store: EmailPreferenceStore, settings: Settings) -> None:
        self._store = store
        self._spec = email_kind_spec(settings)

    async def jobs_for(self, events: Sequence[Event]) -> list[NewJob]:
        """One ``email.send`` job per (event, member) for the durable events whose type
        and kind the member chose; one store query for the whole batch."""
        wanted = [
            e
            for e in events
            if e.id is not None and e.type.durable and e.queue not in SILENT_QUEUES
        ]
        if not wanted:
            return []
        recipients = await self._store.email_recipients(
            {e.tenant_id for e in wanted}, {e.type for e in wanted}
        )
        jobs: list[NewJob] = []
        for event in wanted:
            for recipient in recipients.get(event.tenant_id, ()):
                if not recipient.preferences.wants(event):
                    continue
                user_id = recipient.preferences.user_id
                payload = {
                    "template": Template.JOB_EVENT.value,
                    "recipients": {"user_ids": [user_id]},
                    "context": _context(event),
                }
                jobs.append(
                    self._spec.new_job(
                        payload,
                        tenant_id=event.tenant_id,
                        # A second dispatch of one event (a consumer that lost the race
                        # for its cursor) finds the job still queued and adds none.
                        unique_key=f"email:{event.id}:{user_id}",
                    )
                )
        return jobs


def _context(event: Event) -> dict[str, object]:
    error = event.body.get("error")
    run_at = event.body.get("run_at")
    context = JobEventContext(
        event_id=event.id,
        type=event.type,
        job_id=event.job_id,
        request_id=event.request_id,
        kind=event.kind,
        queue=event.queue,
        attempt=event.attempt,
        at=event.at,
        error=error if isinstance(error, dict) else None,
        run_at=float(run_at) if isinstance(run_at, int | float) else None,
    )
    return context.model_dump(mode="json")
