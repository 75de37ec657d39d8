"""Background work: the scheduler that runs every periodic task of a service."""

from shipway.jobs.scheduler import Scheduler, Task

__all__ = ["Scheduler", "Task"]
