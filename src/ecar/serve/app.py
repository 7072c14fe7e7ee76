"""The web app of ``ecar serve``: a Starlette app with one static page and a JSON API.

Starlette rather than Gradio or FastAPI: the page needs one HTML file, one JSON endpoint and
one streamed endpoint, which Starlette serves with two small dependencies (starlette, and
uvicorn to run it); Gradio would add a large dependency tree and its own front-end build,
and FastAPI's pydantic models would duplicate the validation the config schema already does
(settings are checked by the same code as ``ecar sample`` flags). docs/serve.md.

Routes:

* ``GET /`` — the page (``static/index.html``).
* ``GET /api/models`` — the loaded models, their classes and sampling settings, the limits.
* ``POST /api/generate`` — body ``{"model": "m0", "class": 3, "n": 8, "seed": 0,
  "settings": {"cfg": "2", "stage_steps": "10,8,6"}}``. The body is bounded before it is
  parsed (size, nesting depth, digits of a number: ``LIMITS``). A bad body or value is
  answered at once with a 4xx and ``{"error": one-line reason}``, never a 500; a good
  request is answered with a stream of JSON lines (NDJSON), one event per line: see
  :meth:`ecar.serve.session.ModelSlot.run`. An error during generation arrives as an
  ``error`` event (the status line is already sent).

Each request runs in its own worker thread, which holds the model's lock while it generates
and puts its events on a queue that only this request's response reads, so two requests
never see each other's images.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ecar.errors import shown
from ecar.serve.session import LIMITS, GenerationCancelled, ModelSlot, RequestError, read_json

__all__ = ["create_app"]

log = logging.getLogger("ecar.serve")

_END = object()


def _page() -> str:
    return resources.files("ecar.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _error(status: int, message: str) -> JSONResponse:
    """A refusal: ``{"error": reason}`` with the reason on one line."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


async def _bounded_body(request: Request) -> bytes:
    """The request's body, read only up to ``LIMITS["max_body_bytes"]`` (a larger body, by
    its Content-Length or by what arrives, is refused with 413 before it is all read)."""
    limit = LIMITS["max_body_bytes"]
    too_large = RequestError(f"the request body is larger than {limit:,} bytes", status=413)
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise RequestError(f"the Content-Length header {shown(length)} is not a number of bytes")
        if len(length) > 15 or int(length) > limit:
            raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(slots: list[ModelSlot], stopping: threading.Event | None = None) -> Starlette:
    """The app serving ``slots``. Setting ``stopping`` cancels running generations at their
    next unit (the server sets it when it shuts down)."""
    by_key = {s.key: s for s in slots}
    stopping = stopping or threading.Event()
    page = _page()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [s.describe() for s in slots], "limits": LIMITS})

    async def generate(request: Request) -> Response:
        try:
            body = read_json(await _bounded_body(request))
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object")
            key = body.get("model", slots[0].key)
            if not isinstance(key, str) or key not in by_key:
                raise RequestError(f"unknown model {shown(key)}; this server has {', '.join(by_key)}", status=404)
            slot = by_key[key]
            req = slot.parse(body)
        except RequestError as e:
            return _error(e.status, str(e))
        return StreamingResponse(_events(slot, req, stopping), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [Route("/", index), Route("/api/models", models),
              Route("/api/generate", generate, methods=["POST"])]
    return Starlette(routes=routes)


def _events(slot: ModelSlot, req, stopping: threading.Event):
    """The NDJSON lines of one request: its worker thread generates, this generator (run by
    Starlette in a thread of its pool) forwards what the worker puts on the queue."""
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def work() -> None:
        try:
            slot.run(req, events.put, _AnyOf(cancelled, stopping))
        except GenerationCancelled:
            events.put({"event": "error", "message": "generation cancelled (the server is stopping)"})
        except Exception as e:  # reported on the page as a line, logged here with the traceback
            log.exception("generation failed")
            events.put({"event": "error", "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            events.put(_END)

    threading.Thread(target=work, name=f"ecar-serve-{slot.key}", daemon=True).start()
    try:
        while True:
            event = events.get()
            if event is _END:
                return
            yield (json.dumps(event) + "\n").encode()
    finally:  # the client went away or the stream ended: stop at the next unit
        cancelled.set()


class _AnyOf:
    """A read-only event that is set when either of two events is (what ``run`` checks)."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()
