"""Central's SQLAlchemy models; importing this package registers every table."""

from central.models.base import Base, BigIntPK, UTCDateTime, utcnow
from central.models.branches import Branch, BranchStatus, BranchSyncState
from central.models.catalog import (
    AssortmentException,
    Category,
    FormatProduct,
    MasterDataCounter,
    MasterDataOutbox,
    PriceEntryRow,
    PriceZone,
    Product,
    ProductBarcode,
    Promotion,
    RepricingDocument,
    RepricingLine,
    StoreFormat,
)
from central.models.events import DeadLetter, IngestedEvent
from central.models.receipts import Receipt, ReceiptLineRow, ReceiptPaymentRow

__all__ = [
    "AssortmentException",
    "Base",
    "BigIntPK",
    "Branch",
    "BranchStatus",
    "BranchSyncState",
    "Category",
    "DeadLetter",
    "FormatProduct",
    "IngestedEvent",
    "MasterDataCounter",
    "MasterDataOutbox",
    "PriceEntryRow",
    "PriceZone",
    "Product",
    "ProductBarcode",
    "Promotion",
    "Receipt",
    "ReceiptLineRow",
    "ReceiptPaymentRow",
    "RepricingDocument",
    "RepricingLine",
    "StoreFormat",
    "UTCDateTime",
    "utcnow",
]
