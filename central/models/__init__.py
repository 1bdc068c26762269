"""Central's SQLAlchemy models; importing this package registers every table."""

from central.models.base import Base, BigIntPK, UTCDateTime, utcnow
from central.models.branches import Branch, BranchStatus, BranchSyncState
from central.models.events import DeadLetter, IngestedEvent
from central.models.receipts import Receipt, ReceiptLineRow, ReceiptPaymentRow

__all__ = [
    "Base",
    "BigIntPK",
    "Branch",
    "BranchStatus",
    "BranchSyncState",
    "DeadLetter",
    "IngestedEvent",
    "Receipt",
    "ReceiptLineRow",
    "ReceiptPaymentRow",
    "UTCDateTime",
    "utcnow",
]
