"""The agent's replica of head office's master data, as received on the down stream.

Rows keep the scope they came from (chain ``all`` with scope_id "", format, zone,
branch) so one bucket message replaces exactly its own rows, and the effective
price is resolved at lookup time with ``protocol.pricing`` (the same rules as
central).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from branch_agent.models import AgentBase

__all__ = [
    "FormerProduct",
    "MdAppliedKey",
    "MdBarcode",
    "MdBranch",
    "MdPrice",
    "MdPriceBucket",
    "MdProduct",
    "MdPromotion",
    "MdState",
]


class MdProduct(AgentBase):
    __tablename__ = "md_products"
    __table_args__ = (
        Index("ix_md_products_sku", "sku"),
        Index("ix_md_products_scope_bucket", "scope", "scope_id", "bucket"),
        Index("ix_md_products_scale_plu", "scale_plu"),
        Index("ix_md_products_name", "name"),
    )

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(16))
    weighed: Mapped[bool] = mapped_column()
    scale_plu: Mapped[int | None] = mapped_column(Integer, default=None)
    category: Mapped[str | None] = mapped_column(String(32), default=None)
    # Root-to-leaf category codes joined by "/".
    category_path: Mapped[str] = mapped_column(String(400), default="")
    vat_rate_bp: Mapped[int] = mapped_column(Integer)
    vat_group: Mapped[str] = mapped_column(String(1))
    version: Mapped[int] = mapped_column(BigInteger)


class MdBarcode(AgentBase):
    __tablename__ = "md_barcodes"
    __table_args__ = (
        Index("ix_md_barcodes_barcode", "barcode"),
        Index("ix_md_barcodes_scope_bucket", "scope", "scope_id", "bucket"),
    )

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    barcode: Mapped[str] = mapped_column(String(64), primary_key=True)
    sku: Mapped[str] = mapped_column(String(64))
    bucket: Mapped[int] = mapped_column(Integer)


class MdPrice(AgentBase):
    """One price entry. Only the till's lookup by SKU is indexed: the applier finds a
    bucket's rows through ``MdPriceBucket`` (a second index cost every insert more)."""

    __tablename__ = "md_prices"
    __table_args__ = (Index("ix_md_prices_sku", "sku"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(8))
    scope_id: Mapped[str] = mapped_column(String(32))
    bucket: Mapped[int] = mapped_column(Integer)
    sku: Mapped[str] = mapped_column(String(64))
    price: Mapped[int] = mapped_column(BigInteger)
    effective_at: Mapped[datetime] = mapped_column()
    effective_local: Mapped[str | None] = mapped_column(String(19), default=None)
    version: Mapped[int] = mapped_column(BigInteger)


class MdPriceBucket(AgentBase):
    """The rows of ``md_prices`` of one bucket at one scope, as JSON
    ``{"ids": [id, ...], "rows": [[sku, price, effective_at, effective_local, version], ...]}``
    (``effective_at`` as stored in ``md_prices``), written in the same transaction as
    those rows.

    Applying a bucket message compares it with this one value instead of reading the
    bucket's rows through an index on (scope, scope_id, bucket) that every insert
    would have to maintain; stale rows are deleted by their ids.
    """

    __tablename__ = "md_price_buckets"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[str] = mapped_column(Text)


class MdPromotion(AgentBase):
    __tablename__ = "md_promotions"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    scope_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    promotion_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    ends_at: Mapped[datetime | None] = mapped_column(default=None)
    # protocol.masterdata.PromotionRecord, MessagePack.
    body: Mapped[bytes] = mapped_column(LargeBinary)


class MdAppliedKey(AgentBase):
    """The version last applied per down-stream subject: an older message redelivered
    after a newer one (a lost ack) is skipped instead of rolling the value back."""

    __tablename__ = "md_applied_keys"

    subject: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    stream_seq: Mapped[int] = mapped_column(BigInteger)


class MdState(AgentBase):
    """applied_version (the last version mark applied), last_stream_seq."""

    __tablename__ = "md_state"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class MdBranch(AgentBase):
    """The code of every branch central has registered, as its last answer to the
    position report listed them (``SnapshotReply.branches``; replaced whole each time
    central sends it). Empty until central has sent a list: a transfer's other branch is
    then not checked. A transfer naming a code not in it is refused at the store, as
    central would flag it ``unknown_branch``."""

    __tablename__ = "md_branches"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)


class FormerProduct(AgentBase):
    """A product that left this branch's assortment (removed at central, archived, or
    deleted): its facts as the replica last had them, kept when the applier drops its
    last ``md_products`` row and forgotten when it comes back.

    Not part of the replica (a snapshot never drops it): the store may still hold stock
    of the product, and stock documents that take goods out (write-off, supplier return,
    transfer out) and stocktake counts need to know whether it is counted in pieces or
    weighed (``branch_agent.catalog.find_former_products``). ``facts`` says where they
    came from: ``master_data`` (the replica's row), or ``ledger`` for a product that had
    left before this table existed (the upgrade a1801 infers ``weighed`` from its stock
    moves: a fractional move means weighed, otherwise pieces; the name is the SKU).
    """

    __tablename__ = "former_products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    unit: Mapped[str] = mapped_column(String(16))
    weighed: Mapped[bool] = mapped_column()
    left_at: Mapped[datetime] = mapped_column()
    facts: Mapped[str] = mapped_column(String(16), default="master_data")
