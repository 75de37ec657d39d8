"""Data sources: files, SQL queries and HTTP pushes taken once, validated as whole tables,
bad rows quarantined with their reasons, good rows scored by the service's current plan,
kept as dataset versions, or stored as labels."""

from shipway.data.batch import FileOutcome, RunResult, Uses, replay, run_source

__all__ = ["FileOutcome", "RunResult", "Uses", "replay", "run_source"]
