"""The HTTP face."""

from shipway.api.app import create_app

__all__ = ["create_app"]
