"""The data contract: inferred from pilot data, enforced on every request and batch."""

from shipway.contract.infer import column_stats, infer_contract
from shipway.contract.schema import contract_json_schema
from shipway.contract.validate import Contract, RecordsResult, TableResult

__all__ = [
    "Contract",
    "RecordsResult",
    "TableResult",
    "column_stats",
    "contract_json_schema",
    "infer_contract",
]
