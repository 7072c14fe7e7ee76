"""``ecar serve``: a local web page that shows generation stage by stage (docs/serve.md).

:mod:`ecar.serve.session` loads checkpoints, validates requests and generates (no web
framework); :mod:`ecar.serve.app` is the Starlette app and :mod:`ecar.serve.server` runs it
with uvicorn. The web framework is the optional extra ``ecar[serve]``: importing this
package works without it, and :func:`require_web` says what to install.
"""

from ecar.serve.session import (
    LIMITS,
    GenerationRequest,
    ModelSlot,
    RequestError,
    ServeError,
    load_slots,
)

WEB_PACKAGES = ("starlette", "uvicorn")
"""The distributions of the ``serve`` extra (``pip install 'ecar[serve]'``)."""

try:  # the optional extra; without it only `ecar serve` itself fails, with what to install
    from ecar.serve.app import create_app
    from ecar.serve.server import run_server
    WEB_MISSING: str | None = None
except ModuleNotFoundError as e:
    if e.name not in WEB_PACKAGES:
        raise
    WEB_MISSING = e.name
    create_app = run_server = None  # type: ignore[assignment]

__all__ = ["LIMITS", "GenerationRequest", "ModelSlot", "RequestError", "ServeError", "WEB_MISSING",
           "create_app", "load_slots", "require_web", "run_server"]


def require_web() -> None:
    """Raise :class:`ServeError` naming the install command when the web extra is missing."""
    if WEB_MISSING:
        raise ServeError(f"`ecar serve` needs the web extra ({WEB_MISSING} is not installed): "
                         f"pip install 'ecar[serve]' (or: pip install {' '.join(WEB_PACKAGES)})")
