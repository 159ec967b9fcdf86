"""``video.process``: the QuDemo seed's video jobs (queue ``video``, priority 2).

The handler is a placeholder until the job-kinds issue brings real processing: it walks
through a few progress steps and returns what it was given, saying that nothing was
transcoded. The input model and the queue settings are the real contract: the seed's
``POST /api/video/process`` and ``POST /v1/requests`` validate against :class:`VideoInput`.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

import conveyor
from conveyor.engine.kinds import Registry

KIND = "video.process"
QUEUE = "video"

STEPS = ("downloading", "extracting frames", "transcribing", "indexing")
STEP_SECONDS = 0.05


class VideoInput(BaseModel):
    """A video to process for a company."""

    # Forbidden here, not only by the registry's derived model, because the seed's route
    # validates against this class too: one schema in the OpenAPI document, one rule.
    model_config = ConfigDict(extra="forbid")

    video_url: HttpUrl = Field(description="Where the video is (http or https).")
    company_name: str = Field(min_length=1, max_length=200, description="Whose video it is.")
    source: str = Field(
        default="url",
        min_length=1,
        max_length=50,
        description="Where it comes from, e.g. youtube, loom, vimeo, upload, url.",
    )


async def process(ctx: conveyor.JobContext, payload: VideoInput) -> dict[str, object]:
    """Report a few progress steps, then return the input with a placeholder notice."""
    for number, step in enumerate(STEPS, start=1):
        await asyncio.sleep(STEP_SECONDS)
        ctx.progress(number / len(STEPS), f"{step} (placeholder)")
    return {
        "video_url": str(payload.video_url),
        "company_name": payload.company_name,
        "source": payload.source,
        "placeholder": True,
        "note": "placeholder result: video processing arrives with the job-kinds issue",
    }


def register(registry: Registry) -> None:
    """Register ``video.process`` in ``registry`` (done for the default one on import)."""
    if KIND not in registry:
        conveyor.job(KIND, queue=QUEUE, priority=2, max_attempts=3, timeout=300, registry=registry)(
            process
        )


register(conveyor.registry)
