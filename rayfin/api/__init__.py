"""The rayfin API over HTTP: pydantic models (`models`), typed errors as status codes
(`errors`), and the FastAPI application (`app`). No Ray import: Serve hosts it
(serve_apps/api_app.py), unit tests drive it with a fake controller."""
from rayfin.api.app import ApiLimits, ControllerPort, build_app
from rayfin.api.errors import status_of

__all__ = ["ApiLimits", "ControllerPort", "build_app", "status_of"]
