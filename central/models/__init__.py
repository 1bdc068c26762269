"""Central's SQLAlchemy models; importing this package registers every table."""

from central.models.audit import AuditEntry
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
from central.models.documents import (
    CustomerReturn,
    CustomerReturnLineRow,
    StockDocument,
    StockDocumentLineRow,
)
from central.models.events import DeadLetter, IngestedEvent
from central.models.receipts import Receipt, ReceiptLineRow, ReceiptPaymentRow
from central.models.reports import (
    LastSellingPrice,
    PaymentsDaily,
    SalesBranchDaily,
    SalesCashierDaily,
    SalesHourly,
    SalesProductDaily,
    SalesProductDailyChain,
    ShiftPaymentTotals,
    ShiftTotals,
    StockMovementDaily,
    SummaryBacklog,
)
from central.models.shifts import CashMovement, ClosedDay, Shift
from central.models.stock import StockBalance, StockMovement, StockTransfer, StockTransferLine
from central.models.users import ApiToken, ApiUser, BranchCredential

__all__ = [
    "ApiToken",
    "ApiUser",
    "AssortmentException",
    "AuditEntry",
    "Base",
    "BigIntPK",
    "Branch",
    "BranchCredential",
    "BranchStatus",
    "BranchSyncState",
    "CashMovement",
    "Category",
    "ClosedDay",
    "CustomerReturn",
    "CustomerReturnLineRow",
    "DeadLetter",
    "FormatProduct",
    "IngestedEvent",
    "LastSellingPrice",
    "MasterDataCounter",
    "MasterDataOutbox",
    "PaymentsDaily",
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
    "SalesBranchDaily",
    "SalesCashierDaily",
    "SalesHourly",
    "SalesProductDaily",
    "SalesProductDailyChain",
    "Shift",
    "ShiftPaymentTotals",
    "ShiftTotals",
    "StockBalance",
    "StockDocument",
    "StockDocumentLineRow",
    "StockMovement",
    "StockMovementDaily",
    "StockTransfer",
    "StockTransferLine",
    "StoreFormat",
    "SummaryBacklog",
    "UTCDateTime",
    "utcnow",
]
