"""The HTTP API (FastAPI): submit, track and operate jobs; the QuDemo seed's routes.

``create_app`` is the whole public surface; ``conveyor serve`` and ``conveyor api`` run
it under uvicorn.
"""

from conveyor.api.app import create_app

__all__ = ["create_app"]
