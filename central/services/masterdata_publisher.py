"""Versions, the publication outbox, and the publisher of master data to the down stream.

Every master-data write does, in its own transaction: bump the global version
(``allocate_versions``), change its rows, and ``enqueue`` the down-stream keys it
touched (product or price bucket at a scope, or a promotion). The publisher loop
reads pending outbox rows, builds the *current* value of each key from the
database, publishes them with JetStream acks, then a ``VersionMark``, and only
then marks the rows published. A crash between commit and publish leaves the rows
pending, and they are published on the next run; publishing a key twice is
harmless because its message is its full current state (latest value per key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from sqlalchemy import and_, exists, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from central.models import (
    AssortmentException,
    Branch,
    Category,
    FormatProduct,
    MasterDataCounter,
    MasterDataOutbox,
    PriceEntryRow,
    Product,
    ProductBarcode,
    Promotion,
)
from protocol.masterdata import (
    KIND_PRICE,
    KIND_PRODUCT,
    KIND_PROMOTION,
    KIND_VERSION,
    VERSION_KEY,
    MasterDataMessage,
    PriceBucket,
    PriceEntry,
    ProductBucket,
    ProductRecord,
    PromotionRecord,
    VersionMark,
    bucket_key,
    encode_masterdata,
    parse_bucket_key,
)
from protocol.pricing import PriceCandidate, prune_schedule
from protocol.subjects import down_subject

__all__ = [
    "DownKey",
    "MasterDataPublisher",
    "allocate_versions",
    "build_message",
    "category_paths",
    "current_version",
    "enqueue",
    "product_targets",
    "published_version",
]

log = logging.getLogger(__name__)

# (kind, scope, scope_id or "", key)
DownKey = tuple[str, str, str, str]
_CHUNK = 2000
_PRUNE_MARGIN = timedelta(days=2)


async def allocate_versions(session: AsyncSession, count: int = 1) -> int:
    """Reserve ``count`` versions; returns the last one (the first is last - count + 1).

    The counter row stays locked until the transaction ends, so concurrent writers
    get their versions (and outbox ids) in commit order.
    """
    result = await session.execute(
        update(MasterDataCounter)
        .where(MasterDataCounter.name == "version")
        .values(value=MasterDataCounter.value + count)
        .returning(MasterDataCounter.value)
    )
    return int(result.scalar_one())


async def current_version(session: AsyncSession) -> int:
    value = await session.scalar(
        select(MasterDataCounter.value).where(MasterDataCounter.name == "version")
    )
    return int(value or 0)


async def published_version(session: AsyncSession) -> int:
    """The highest version whose changes all reached the stream."""
    pending = await session.scalar(
        select(func.min(MasterDataOutbox.version)).where(MasterDataOutbox.published_at.is_(None))
    )
    if pending is not None:
        return int(pending) - 1
    return await current_version(session)


async def enqueue(session: AsyncSession, version: int, keys: Iterable[DownKey]) -> int:
    rows = [
        {"version": version, "kind": k, "scope": s, "scope_id": sid, "key": key}
        for k, s, sid, key in dict.fromkeys(keys)
    ]
    for start in range(0, len(rows), _CHUNK):
        await session.execute(insert(MasterDataOutbox), rows[start : start + _CHUNK])
    return len(rows)


async def product_targets(session: AsyncSession, skus: Sequence[str]) -> set[DownKey]:
    """Every product bucket (at format or branch scope) where these SKUs may appear."""
    keys: set[DownKey] = set()
    other = aliased(Branch)
    for start in range(0, len(skus), _CHUNK):
        chunk = list(skus[start : start + _CHUNK])
        formats = await session.execute(
            select(FormatProduct.format_code, Product.bucket)
            .join(Product, Product.sku == FormatProduct.sku)
            .where(FormatProduct.sku.in_(chunk))
            .distinct()
        )
        keys.update((KIND_PRODUCT, "format", f, bucket_key(b)) for f, b in formats)
        branches = await session.execute(
            select(AssortmentException.branch, Product.bucket)
            .join(Product, Product.sku == AssortmentException.sku)
            .where(AssortmentException.sku.in_(chunk))
            .distinct()
        )
        keys.update((KIND_PRODUCT, "branch", br, bucket_key(b)) for br, b in branches)
        # A branch excluding a product moves it to branch scope for its format mates.
        mates = await session.execute(
            select(other.code, Product.bucket)
            .select_from(AssortmentException)
            .join(Branch, Branch.code == AssortmentException.branch)
            .join(other, other.format_code == Branch.format_code)
            .join(Product, Product.sku == AssortmentException.sku)
            .where(AssortmentException.sku.in_(chunk), AssortmentException.include.is_(False))
            .distinct()
        )
        keys.update((KIND_PRODUCT, "branch", br, bucket_key(b)) for br, b in mates)
    return keys


async def category_paths(session: AsyncSession) -> dict[str, tuple[str, ...]]:
    parents = dict((await session.execute(select(Category.code, Category.parent_code))).all())
    paths: dict[str, tuple[str, ...]] = {}
    for code in parents:
        path: list[str] = []
        node: str | None = code
        while node is not None and node not in path and len(path) < 32:
            path.append(node)
            node = parents.get(node)
        paths[code] = tuple(reversed(path))
    return paths


def _excluded_in_format(format_code: str) -> object:
    return exists().where(
        AssortmentException.sku == Product.sku,
        AssortmentException.include.is_(False),
        AssortmentException.branch == Branch.code,
        Branch.format_code == format_code,
    )


async def _product_bucket(
    session: AsyncSession, scope: str, scope_id: str, bucket: int, version: int
) -> ProductBucket:
    query = select(Product).where(Product.bucket == bucket, Product.active)
    in_format = exists().where(FormatProduct.sku == Product.sku)
    if scope == "format":
        query = query.where(
            in_format.where(FormatProduct.format_code == scope_id),
            ~_excluded_in_format(scope_id),  # type: ignore[operator]
        )
    elif scope == "branch":
        branch = await session.get(Branch, scope_id)
        included = exists().where(
            AssortmentException.branch == scope_id,
            AssortmentException.sku == Product.sku,
            AssortmentException.include.is_(True),
        )
        if branch is not None and branch.format_code:
            excluded_here = exists().where(
                AssortmentException.branch == scope_id,
                AssortmentException.sku == Product.sku,
                AssortmentException.include.is_(False),
            )
            query = query.where(
                included
                | and_(
                    in_format.where(FormatProduct.format_code == branch.format_code),
                    _excluded_in_format(branch.format_code),  # type: ignore[arg-type]
                    ~excluded_here,
                )
            )
        else:
            query = query.where(included)
    else:
        query = query.where(true().is_(False))
    products = (await session.scalars(query.order_by(Product.sku))).all()
    codes: dict[str, list[str]] = defaultdict(list)
    if products:
        barcode_rows = await session.execute(
            select(ProductBarcode.sku, ProductBarcode.barcode)
            .join(Product, Product.sku == ProductBarcode.sku)
            .where(Product.bucket == bucket)
            .order_by(ProductBarcode.barcode)
        )
        for sku, code in barcode_rows:
            codes[sku].append(code)
    paths = await category_paths(session) if products else {}
    return ProductBucket(
        scope=scope,  # type: ignore[arg-type]
        scope_id=scope_id or None,
        bucket=bucket,
        version=version,
        products=tuple(
            ProductRecord(
                sku=p.sku,
                name=p.name,
                unit=p.unit,
                weighed=p.weighed,
                scale_plu=p.scale_plu,
                barcodes=tuple(codes.get(p.sku, ())),
                category=p.category_code,
                category_path=paths.get(p.category_code, ()) if p.category_code else (),
                vat_rate_bp=p.vat_rate_bp,
                vat_group=p.vat_group,
                version=p.version,
            )
            for p in products
        ),
    )


async def _price_bucket(
    session: AsyncSession, scope: str, scope_id: str, bucket: int, version: int, now: datetime
) -> PriceBucket:
    rows = await session.execute(
        select(
            PriceEntryRow.sku,
            PriceEntryRow.price,
            PriceEntryRow.effective_at,
            PriceEntryRow.version,
            PriceEntryRow.effective_local,
        )
        .join(Product, Product.sku == PriceEntryRow.sku)
        .where(
            PriceEntryRow.scope == scope,
            PriceEntryRow.scope_id == scope_id,
            PriceEntryRow.bucket == bucket,
            PriceEntryRow.withdrawn.is_(False),
            Product.active,
        )
    )
    by_sku: dict[str, list[PriceCandidate]] = defaultdict(list)
    for sku, price, effective_at, entry_version, local in rows:
        by_sku[sku].append(
            PriceCandidate(scope, price, effective_at, entry_version, effective_local=local)
        )
    entries: list[PriceEntry] = []
    # Pruned with a margin: a local-time entry takes effect up to ~26 h apart across zones.
    horizon = now - _PRUNE_MARGIN
    for sku in sorted(by_sku):
        for c in prune_schedule(by_sku[sku], horizon):
            entries.append(
                PriceEntry(
                    sku=sku,
                    price=c.price,
                    effective_at=c.effective_at,
                    version=c.version,
                    effective_local=c.effective_local,
                )
            )
    return PriceBucket(
        scope=scope,  # type: ignore[arg-type]
        scope_id=scope_id or None,
        bucket=bucket,
        version=version,
        entries=tuple(entries),
    )


async def _promotion(
    session: AsyncSession, scope: str, scope_id: str, promotion_id: str, version: int
) -> PromotionRecord:
    promo = await session.get(Promotion, promotion_id)
    reaches = promo is not None and promo.active
    if promo is not None and reaches:
        reaches = (not promo.branches) if scope == "all" else scope_id in promo.branches
    if promo is None or not reaches:
        return PromotionRecord(promotion_id=promotion_id, version=version, deleted=True)
    return PromotionRecord(
        promotion_id=promo.promotion_id,
        version=promo.version,
        name=promo.name,
        type=promo.type,  # type: ignore[arg-type]
        percent_bp=promo.percent_bp,
        amount=promo.amount,
        n=promo.n,
        m=promo.m,
        skus=tuple(promo.skus),
        categories=tuple(promo.categories),
        starts_at=promo.starts_at,
        ends_at=promo.ends_at,
    )


async def build_message(
    session: AsyncSession, key: DownKey, version: int, now: datetime
) -> tuple[str, MasterDataMessage]:
    """The subject and current value of one down-stream key."""
    kind, scope, scope_id, k = key
    subject = down_subject(scope, scope_id or None, kind, k)
    if kind == KIND_PRODUCT:
        return subject, await _product_bucket(
            session, scope, scope_id, parse_bucket_key(k), version
        )
    if kind == KIND_PRICE:
        return subject, await _price_bucket(
            session, scope, scope_id, parse_bucket_key(k), version, now
        )
    if kind == KIND_PROMOTION:
        return subject, await _promotion(session, scope, scope_id, k, version)
    raise ValueError(f"unknown master-data kind {kind!r}")


class MasterDataPublisher:
    """Publishes pending outbox rows; one per process (an asyncio lock), and on
    PostgreSQL one per database (an advisory lock), so no stale value overtakes a newer."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        # The whole backlog in one pass: repeated changes of a bucket coalesce into one message.
        batch: int = 200_000,
        window: int = 256,
        ack_timeout_s: float = 10.0,
        poll_interval_s: float = 0.05,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.batch = batch
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.poll_interval_s = poll_interval_s
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.published_messages = 0
        self.last_version = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.publish_pending(js)
            except Exception as exc:
                # NATS or database unavailable: the rows stay pending.
                log.warning("master-data publication failed, retrying: %s", exc)
                sent = 0
                await asyncio.sleep(1.0)
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def publish_pending(self, js: JetStreamContext) -> int:
        """One batch: returns how many outbox rows were published."""
        async with self._lock, self._sessionmaker() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres:
                got = await session.scalar(select(func.pg_try_advisory_xact_lock(0x6D64_7075_626C)))
                if not got:
                    return 0
            rows = (
                await session.execute(
                    select(
                        MasterDataOutbox.id,
                        MasterDataOutbox.version,
                        MasterDataOutbox.kind,
                        MasterDataOutbox.scope,
                        MasterDataOutbox.scope_id,
                        MasterDataOutbox.key,
                    )
                    .where(MasterDataOutbox.published_at.is_(None))
                    .order_by(MasterDataOutbox.id)
                    .limit(self.batch)
                )
            ).all()
            if not rows:
                return 0
            version = max(r.version for r in rows)
            now = datetime.now(UTC)
            keys = list(dict.fromkeys((r.kind, r.scope, r.scope_id, r.key) for r in rows))
            messages = [await build_message(session, key, version, now) for key in keys]
            messages.append(
                (
                    down_subject("all", None, KIND_VERSION, VERSION_KEY),
                    VersionMark(version=version, published_at=now),
                )
            )
            if not postgres:
                # End SQLite's read snapshot: a write on a stale snapshot would fail busy.
                await session.rollback()
            await self._publish(js, [(s, encode_masterdata(m)) for s, m in messages])
            ids = [r.id for r in rows]
            for start in range(0, len(ids), _CHUNK):
                await session.execute(
                    update(MasterDataOutbox)
                    .where(MasterDataOutbox.id.in_(ids[start : start + _CHUNK]))
                    .values(published_at=now)
                )
            await session.commit()
        self.published_messages += len(messages)
        self.last_version = version
        return len(rows)

    async def _publish(self, js: JetStreamContext, messages: list[tuple[str, bytes]]) -> None:
        """Publish in windows; the version mark (last) only after all others are acked."""
        body, mark = messages[:-1], messages[-1]
        for start in range(0, len(body), self.window):
            futures = [await js.publish_async(s, d) for s, d in body[start : start + self.window]]
            # publish_async can hang forever on a server error (NATS.md): bounded wait.
            await asyncio.wait_for(asyncio.gather(*futures), self.ack_timeout_s)
        await js.publish(mark[0], mark[1], timeout=self.ack_timeout_s)
