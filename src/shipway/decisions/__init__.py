"""The decision log: durable group-commit writer and queries."""

from shipway.decisions.log import (
    DecisionLog,
    DecisionRow,
    ShadowLog,
    get_decision,
    iter_decisions,
)

__all__ = ["DecisionLog", "DecisionRow", "ShadowLog", "get_decision", "iter_decisions"]
