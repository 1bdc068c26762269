"""Head office master data: catalog, assortment, prices, promotions, and their publication."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from central.models.base import Base, BigIntPK, utcnow

__all__ = [
    "AssortmentException",
    "Category",
    "FormatProduct",
    "MasterDataCounter",
    "MasterDataOutbox",
    "PriceEntryRow",
    "PriceZone",
    "Product",
    "ProductBarcode",
    "Promotion",
    "RepricingDocument",
    "RepricingLine",
    "RepricingLineBranch",
    "StoreFormat",
    "VatGroup",
]


class Category(Base):
    __tablename__ = "categories"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_code: Mapped[str | None] = mapped_column(String(32), default=None, index=True)


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (Index("ix_products_name", "name"),)

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # pcs, kg, l, m ...: the unit of quantity_milli and of the price.
    unit: Mapped[str] = mapped_column(String(16), default="pcs")
    weighed: Mapped[bool] = mapped_column(default=False)
    scale_plu: Mapped[int | None] = mapped_column(Integer, default=None)
    category_code: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    vat_rate_bp: Mapped[int] = mapped_column(Integer)
    # VAT group letter of the fiscal printers for this rate.
    vat_group: Mapped[str] = mapped_column(String(1), default="A")
    active: Mapped[bool] = mapped_column(default=True)
    # protocol.masterdata.bucket_of(sku): which down-stream message carries it.
    bucket: Mapped[int] = mapped_column(Integer, index=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProductBarcode(Base):
    __tablename__ = "product_barcodes"

    barcode: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(
        String(64), ForeignKey("products.sku", ondelete="CASCADE"), index=True
    )
    # ean13, ean8, upca, internal
    kind: Mapped[str] = mapped_column(String(16))


class StoreFormat(Base):
    """A cluster of branches that sell the same assortment (minimarket, hypermarket...)."""

    __tablename__ = "store_formats"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))


class FormatProduct(Base):
    __tablename__ = "format_products"

    format_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AssortmentException(Base):
    """A branch selling a product its format does not (include) or not selling one it does."""

    __tablename__ = "assortment_exceptions"

    branch: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    include: Mapped[bool] = mapped_column()


class PriceZone(Base):
    __tablename__ = "price_zones"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Local times given for the zone's price changes are read in this zone.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")


class PriceEntryRow(Base):
    """One price decision: a price at a scope from a moment on (history is kept)."""

    __tablename__ = "price_entries"
    __table_args__ = (
        Index("ix_price_entries_scope_bucket", "scope", "scope_id", "bucket"),
        # The entry in force for a SKU at a scope and moment: one index range, whatever
        # the planner's statistics say (SQLite without ANALYZE picked the bucket index).
        Index("ix_price_entries_sku_scope_moment", "sku", "scope", "scope_id", "effective_at"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # all | format | zone | branch; scope_id "" for the chain.
    scope: Mapped[str] = mapped_column(String(8))
    scope_id: Mapped[str] = mapped_column(String(32), default="")
    sku: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[int] = mapped_column(Integer)
    price: Mapped[int] = mapped_column(BigInteger)
    # The earliest UTC moment among the branches reached (exact when given in UTC).
    effective_at: Mapped[datetime] = mapped_column()
    # Wall-clock "YYYY-MM-DDTHH:MM:SS" when given in the branches' local time.
    effective_local: Mapped[str | None] = mapped_column(String(19), default=None)
    version: Mapped[int] = mapped_column(BigInteger)
    # A withdrawn override: kept for history, no longer published. ``withdrawn_at``:
    # when (it was in force before that moment: the expected price of a past moment,
    # the till-price mismatches). None on a withdrawn entry: withdrawn before this was
    # recorded and no audit row said when (it counts at no moment, as it used to).
    withdrawn: Mapped[bool] = mapped_column(default=False)
    withdrawn_at: Mapped[datetime | None] = mapped_column(default=None)
    document_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RepricingDocument(Base):
    __tablename__ = "repricing_documents"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    # draft -> approved (-> effective once effective_at has passed)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    scope: Mapped[str] = mapped_column(String(8))
    scope_id: Mapped[str] = mapped_column(String(32), default="")
    effective_at: Mapped[datetime] = mapped_column()
    effective_local: Mapped[str | None] = mapped_column(String(19), default=None)
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(default=None)


class RepricingLine(Base):
    __tablename__ = "repricing_lines"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("repricing_documents.id", ondelete="CASCADE"), index=True
    )
    sku: Mapped[str] = mapped_column(String(64))
    new_price: Mapped[int] = mapped_column(BigInteger)
    # The stock the line covers (given, or central's in the scope at the draft).
    stock_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    # Filled on approval. old_price: the scope's own price before (its entries, else the
    # chain's; a branch scope: the branch's). The stock is split three ways: revalued
    # (the document's price replaces an old one: old_value -> new_value), unaffected
    # (another price stays in force there) and unpriced (no price before: it gains a
    # retail value, unpriced_value, which is no revaluation).
    old_price: Mapped[int | None] = mapped_column(BigInteger, default=None)
    old_value: Mapped[int] = mapped_column(BigInteger, default=0)
    new_value: Mapped[int] = mapped_column(BigInteger, default=0)
    revalued_stock_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    unaffected_stock_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_stock_milli: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_value: Mapped[int] = mapped_column(BigInteger, default=0)


class RepricingLineBranch(Base):
    """A line's stock at one branch (taken with the draft) and, on approval, what the
    document does to it there."""

    __tablename__ = "repricing_line_branches"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    line_id: Mapped[int] = mapped_column(
        ForeignKey("repricing_lines.id", ondelete="CASCADE"), index=True
    )
    branch: Mapped[str] = mapped_column(String(32))
    stock_milli: Mapped[int] = mapped_column(BigInteger)
    # draft | revalued | unaffected | unpriced
    status: Mapped[str] = mapped_column(String(16), default="draft")
    # The branch's price just before the document's moment and from it on.
    old_price: Mapped[int | None] = mapped_column(BigInteger, default=None)
    new_price: Mapped[int | None] = mapped_column(BigInteger, default=None)
    old_value: Mapped[int] = mapped_column(BigInteger, default=0)
    new_value: Mapped[int] = mapped_column(BigInteger, default=0)


class Promotion(Base):
    __tablename__ = "promotions"

    promotion_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # percent | amount | n_for_m
    type: Mapped[str] = mapped_column(String(16))
    percent_bp: Mapped[int] = mapped_column(Integer, default=0)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    n: Mapped[int] = mapped_column(Integer, default=0)
    m: Mapped[int] = mapped_column(Integer, default=0)
    skus: Mapped[list[str]] = mapped_column(JSON, default=list)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Empty: every branch of the chain.
    branches: Mapped[list[str]] = mapped_column(JSON, default=list)
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime] = mapped_column()
    active: Mapped[bool] = mapped_column(default=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class MasterDataCounter(Base):
    """The global master-data version; bumped in the writing transaction (its row lock
    orders concurrent writers, so versions are assigned in commit order)."""

    __tablename__ = "masterdata_counter"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class MasterDataOutbox(Base):
    """A down-stream key to republish, written in the same transaction as the change."""

    __tablename__ = "masterdata_outbox"
    __table_args__ = (Index("ix_masterdata_outbox_pending", "published_at", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(BigInteger)
    # product | price | promo
    kind: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(8))
    scope_id: Mapped[str] = mapped_column(String(32), default="")
    key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(default=None)


class VatGroup(Base):
    """The chain's VAT groups: the rate each group (A..H, the fiscal printers' tax codes
    1..8) is programmed with at the printers. A product's group must carry its rate,
    or the fiscal record and the books disagree on its VAT. No rows: not checked."""

    __tablename__ = "vat_groups"

    code: Mapped[str] = mapped_column(String(1), primary_key=True)
    rate_bp: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
