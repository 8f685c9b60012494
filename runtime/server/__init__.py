"""HTTP server over one shared Runtime (`editx serve`; FastAPI + uvicorn, the `server` extra).

    from editx.server import create_app, ServerConfig
    app = create_app(editx.Runtime.from_pretrained("dummy:tiny"), ServerConfig(max_requests=64))

Endpoints and wire formats: `app.py`, `wire.py`, `openai_speech.py` (OpenAI's speech API); README "HTTP server".
"""
from __future__ import annotations

from .state import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(runtime, config: ServerConfig | None = None, model_name: str = ""):
    """The FastAPI app serving `runtime` (see `editx.server.app.create_app`)."""
    try:
        from .app import create_app as _create  # imported here: fastapi is an optional dependency
    except ImportError as exc:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"the HTTP server needs fastapi and uvicorn ({exc}); "
                                      "install them with: pip install 'editx-rt[server]'") from exc

    return _create(runtime, config, model_name)
