"""Notifications: everything Shipway sends out goes through the outbox."""

from shipway.notify.outbox import Outbox, enqueue, host_of

__all__ = ["Outbox", "enqueue", "host_of"]
