"""The decision log: its writers (``log``), the rows it holds (``records``), every query of it
(``queries``) and the labels that come back for it (``labels``).

This package is the one owner of the tables ``decisions``, ``shadow_decisions``,
``rejections`` and ``feedback``: no other module reads or writes them.
"""

from shipway.decisions.log import DecisionLog, DecisionRow, RejectionLog, ShadowLog
from shipway.decisions.queries import get, iter_decisions

__all__ = [
    "DecisionLog",
    "DecisionRow",
    "RejectionLog",
    "ShadowLog",
    "get",
    "iter_decisions",
]
