"""``qa.answer``: the QuDemo seed's question-answering jobs (queue ``qa``, priority 1).

The handler is a placeholder until the job-kinds issue brings retrieval and a language
model: it answers deterministically and says so. The input model and the queue settings
are the real contract, used by the seed's
``POST /api/interactions/{interactionId}/questions`` and by ``POST /v1/requests``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

import conveyor
from conveyor.engine.kinds import Registry

KIND = "qa.answer"
QUEUE = "qa"


class QuestionInput(BaseModel):
    """A question asked in an interaction with a company's demo."""

    interaction_id: str = Field(min_length=1, max_length=200)
    question: str = Field(min_length=1, max_length=4000)
    company_name: str = Field(min_length=1, max_length=200)


async def answer(ctx: conveyor.JobContext, payload: QuestionInput) -> dict[str, object]:
    """A deterministic placeholder answer that says it is one."""
    ctx.progress(1.0, "answered (placeholder)")
    return {
        "interaction_id": payload.interaction_id,
        "question": payload.question,
        "answer": (
            f"Placeholder answer for {payload.company_name}: Conveyor does not answer "
            "questions yet (the job-kinds issue brings retrieval and a language model). "
            f"You asked: {payload.question}"
        ),
        "placeholder": True,
    }


def register(registry: Registry) -> None:
    """Register ``qa.answer`` in ``registry`` (done for the default one on import)."""
    if KIND not in registry:
        conveyor.job(KIND, queue=QUEUE, priority=1, max_attempts=3, timeout=120, registry=registry)(
            answer
        )


register(conveyor.registry)
