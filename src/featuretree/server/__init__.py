"""The interactive explorer: a FastAPI app (``create_app``) and its static page."""

from __future__ import annotations

from .app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app"]
