"""The decision log: its writers (``log``), the rows it holds (``records``), every query of it
(``queries``) and the labels that come back for it (``labels``).

This package is the one owner of the tables ``decisions``, ``shadow_decisions`` and
``feedback``: no other module reads or writes them.
"""

from shipway.decisions.log import DecisionLog, DecisionRow, ShadowLog
from shipway.decisions.queries import get, iter_decisions

__all__ = ["DecisionLog", "DecisionRow", "ShadowLog", "get", "iter_decisions"]
