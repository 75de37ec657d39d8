"""Shipway: take an AI pilot to production."""
__version__ = "0.1.0"
