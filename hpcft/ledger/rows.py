"""What the ledger's tables share: the time they stamp rows with, and changing fields of one row by its id
(`Ledger.update` for jobs, hpcft.ledger.assets.update_fields for model assets). A leaf of the ledger layer: the
tables' modules import it, it imports none of them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

from hpcft.errors import NotFound


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def update_row(ledger, table: type, row_id: int, label: str, fields: Dict[str, Any]) -> Any:
    """Set `fields` on the row of `table` with id `row_id` and stamp its `updated_at`, in one write transaction;
    the row as written. NotFound ("`label`: not in the ledger") when there is none."""
    def fn(s) -> Any:
        row = s.get(table, int(row_id))
        if row is None:
            raise NotFound(f"{label}: not in the ledger")
        for k, v in fields.items():
            setattr(row, k, v)
        row.updated_at = utcnow()
        s.add(row)
        return row

    return ledger.write(fn)
