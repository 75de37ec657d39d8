"""Data sources: files taken once, validated as whole tables, bad rows quarantined with their
reasons, good rows scored by the service's current plan and written to a sink."""

from shipway.data.batch import FileOutcome, RunResult, run_source

__all__ = ["FileOutcome", "RunResult", "run_source"]
