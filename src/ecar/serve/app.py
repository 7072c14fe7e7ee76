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
never see each other's images. A stop signal (the server sets ``stopping``) or a client
that goes away cancels the generation at its next integration step (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ecar.errors import shown
from ecar.serve.session import LIMITS, GenerationCancelled, ModelSlot, RequestError, read_json

__all__ = ["create_app"]

log = logging.getLogger("ecar.serve")

if sys.version_info >= (3, 11):
    _ExceptionGroup = BaseExceptionGroup
else:  # Python 3.10: the backport anyio (under Starlette) depends on there
    from exceptiongroup import BaseExceptionGroup as _ExceptionGroup

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


def create_app(slots: list[ModelSlot], stopping: threading.Event | None = None) -> _QuietWhenStopping:
    """The app serving ``slots``. Setting ``stopping`` cancels running generations at their
    next integration step (the server sets it when it gets a stop signal); ``app.state.workers``
    holds the live generation threads, which the server waits for before it returns."""
    by_key = {s.key: s for s in slots}
    stopping = stopping or threading.Event()
    workers: set[threading.Thread] = set()
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
        return StreamingResponse(_events(slot, req, stopping, workers), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    routes = [Route("/", index), Route("/api/models", models),
              Route("/api/generate", generate, methods=["POST"])]
    app = Starlette(routes=routes)
    app.state.workers = workers
    return _QuietWhenStopping(app, stopping)


async def _events(slot: ModelSlot, req, stopping: threading.Event, workers: set[threading.Thread]):
    """The NDJSON lines of one request: its worker thread generates and hands each event to
    the event loop, where this async generator forwards it. Nothing here blocks a thread of
    the server's pool, so a stop never waits on a thread parked in a queue."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()

    def put(event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody reads any more, stop generating
            cancelled.set()

    def work() -> None:
        try:
            slot.run(req, put, _AnyOf(cancelled, stopping))
        except GenerationCancelled as e:
            why = "the server is stopping" if stopping.is_set() else "the request was cancelled"
            put({"event": "error", "message": f"generation cancelled ({why}){e.where}"})
        except Exception as e:  # reported on the page as a line, logged here with the traceback
            log.exception("generation failed")
            put({"event": "error", "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            put(_END)
            workers.discard(threading.current_thread())

    worker = threading.Thread(target=work, name=f"ecar-serve-{slot.key}", daemon=True)
    workers.add(worker)
    worker.start()
    try:
        while True:
            event = await events.get()
            if event is _END:
                return
            yield (json.dumps(event) + "\n").encode()
    finally:  # the client went away, the stream ended or the server cut it: stop at the next step
        cancelled.set()


class _QuietWhenStopping:
    """The app, with one change: a request task cancelled while the server stops (uvicorn
    cancels what outlives the grace period) ends quietly instead of reaching uvicorn, which
    would log it as a traceback of the task group's frames. Outside a stop nothing changes."""

    def __init__(self, app: Starlette, stopping: threading.Event):
        self.app, self.stopping = app, stopping
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
            log.warning("a request was cut off by the stop")
        except _ExceptionGroup as group:
            if not self.stopping.is_set() or not _only_cancellations(group):
                raise
            log.warning("a request was cut off by the stop")


def _only_cancellations(group: Any) -> bool:
    """Whether every leaf of ``group`` (an anyio task group's) is a cancellation."""
    return all(_only_cancellations(e) if isinstance(e, _ExceptionGroup) else isinstance(e, asyncio.CancelledError)
               for e in group.exceptions)


class _AnyOf:
    """A read-only event that is set when either of two events is (what ``run`` checks)."""

    def __init__(self, a: threading.Event, b: threading.Event):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()
