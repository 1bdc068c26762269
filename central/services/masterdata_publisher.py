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
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import and_, exists, func, insert, select, true, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from sqlalchemy.types import NullType

from central.auth.context import RequestAudit
from central.failures import FailureLog, one_line
from central.ingest.bulk import dialect_insert, table_of
from central.ingest.worker import CRASH_EXIT_CODE
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
from central.services.audit import record_change
from protocol.masterdata import (
    BUCKETS,
    KIND_PRICE,
    KIND_PRODUCT,
    KIND_PROMOTION,
    KIND_SNAPSHOT,
    KIND_VERSION,
    VERSION_KEY,
    MasterDataMessage,
    PriceBucket,
    PriceEntry,
    ProductBucket,
    ProductRecord,
    PromotionRecord,
    SnapshotMark,
    SnapshotPart,
    SnapshotValue,
    VersionMark,
    bucket_key,
    decode_masterdata,
    encode_masterdata,
    parse_bucket_key,
    snapshot_subject,
)
from protocol.pricing import PriceCandidate, branch_scopes, prune_schedule
from protocol.subjects import DOWN_STREAM, down_subject

__all__ = [
    "SNAPSHOT_KEY",
    "DownKey",
    "MasterDataPublisher",
    "allocate_versions",
    "build_message",
    "build_messages",
    "build_snapshot",
    "category_paths",
    "current_version",
    "down_seq_high",
    "enqueue",
    "enqueue_snapshot",
    "enqueue_snapshots_of_all_branches",
    "excluded_skus",
    "marked_version",
    "note_down_seq",
    "pending_snapshot",
    "product_targets",
    "promotion_record",
    "published_version",
    "up_to_date",
]

log = logging.getLogger(__name__)

# (kind, scope, scope_id or "", key)
DownKey = tuple[str, str, str, str]
_CHUNK = 2000
_PRUNE_MARGIN = timedelta(days=2)
# The outbox key of a branch's snapshot: (KIND_SNAPSHOT, "branch", code, SNAPSHOT_KEY).
SNAPSHOT_KEY = "full"
# The masterdata_counter row holding the highest down-stream sequence central has seen
# (acknowledged to its publications, or the stream's last): a down stream created again
# after the NATS server lost it numbers on above it (see central.runtime).
DOWN_SEQ = "down_stream_seq"
# The masterdata_counter row holding the version of the last version mark published.
MARKED = "marked_version"


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


async def down_seq_high(session: AsyncSession) -> int:
    """The highest down-stream sequence central recorded (0: none yet)."""
    value = await session.scalar(
        select(MasterDataCounter.value).where(MasterDataCounter.name == DOWN_SEQ)
    )
    return int(value or 0)


async def _raise_counter(session: AsyncSession, name: str, value: int) -> None:
    """Raise counter ``name`` to ``value`` (created at 0 when missing; never lowered), in
    the caller's transaction. A guarded raise: two processes noting at once keep the higher."""
    await session.execute(
        dialect_insert(session, table_of(MasterDataCounter))
        .values(name=name, value=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    await session.execute(
        update(MasterDataCounter)
        .where(MasterDataCounter.name == name, MasterDataCounter.value < value)
        .values(value=value)
    )


async def note_down_seq(session: AsyncSession, seq: int) -> None:
    """Raise the recorded highest down-stream sequence to ``seq`` (never lowers it; no
    write when it is there already), in the caller's transaction."""
    if seq <= await down_seq_high(session):
        return
    await _raise_counter(session, DOWN_SEQ, seq)


async def marked_version(session: AsyncSession) -> int:
    """The version of central's last publication (its ``VersionMark``): the highest a
    branch can have applied. A version whose change queued nothing (a product in no
    assortment) is never marked on its own, and no branch misses anything of it."""
    value = await session.scalar(
        select(MasterDataCounter.value).where(MasterDataCounter.name == MARKED)
    )
    if value is not None:
        return int(value)
    # A database from before the counter: its last pass published its highest version.
    value = await session.scalar(
        select(func.max(MasterDataOutbox.version)).where(MasterDataOutbox.published_at.is_not(None))
    )
    return int(value or 0)


def up_to_date(applied: int | None, published: int, central: int) -> bool:
    """A branch applied every published change: its applied version (from its heartbeat;
    None: none yet) against ``marked_version``, read once for all branches, and not
    above central's counter (``current_version``): versions this database never gave
    came from a stale or foreign database publishing into the stream."""
    return published <= (applied or 0) <= central


async def published_version(session: AsyncSession) -> int:
    """The highest version whose changes all reached the stream (a version that queued
    nothing counts as reached: see ``marked_version`` for what branches can apply)."""
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


async def pending_snapshot(session: AsyncSession, branch: str) -> int | None:
    """The version of a snapshot of ``branch`` committed but not yet published."""
    value = await session.scalar(
        select(func.max(MasterDataOutbox.version)).where(
            MasterDataOutbox.kind == KIND_SNAPSHOT,
            MasterDataOutbox.scope_id == branch,
            MasterDataOutbox.published_at.is_(None),
        )
    )
    return int(value) if value is not None else None


async def enqueue_snapshot(session: AsyncSession, branch: str) -> int:
    """Queue a full snapshot for ``branch`` (one outbox row; the publisher expands it in
    order with every other change). A snapshot already queued is not queued twice.
    Returns the version of the queued row; the snapshot carries its pass's version."""
    queued = await pending_snapshot(session, branch)
    if queued is not None:
        return queued
    version = await allocate_versions(session)
    await enqueue(session, version, [(KIND_SNAPSHOT, "branch", branch, SNAPSHOT_KEY)])
    return version


async def enqueue_snapshots_of_all_branches(session: AsyncSession) -> list[str]:
    """Queue a snapshot for every active branch (see ``enqueue_snapshot``); returns
    their codes."""
    branches = list(
        await session.scalars(select(Branch.code).where(Branch.active).order_by(Branch.code))
    )
    for code in branches:
        await enqueue_snapshot(session, code)
    return branches


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


async def excluded_skus(
    session: AsyncSession, *, format_code: str | None = None, branch: str | None = None
) -> list[str]:
    """The SKUs some branch of ``format_code`` excludes, or ``branch`` excludes: the
    products published per branch to their format mates (see ``product_targets``)."""
    query = select(AssortmentException.sku).where(AssortmentException.include.is_(False))
    if branch is not None:
        query = query.where(AssortmentException.branch == branch)
    if format_code is not None:
        query = query.join(Branch, Branch.code == AssortmentException.branch).where(
            Branch.format_code == format_code
        )
    elif branch is None:
        return []
    return list(await session.scalars(query.distinct().order_by(AssortmentException.sku)))


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


def _utc(value: Any, cache: dict[str, datetime]) -> datetime:
    """A stored moment as aware UTC. SQLite gives the text SQLAlchemy stored (naive UTC,
    parsed once per distinct value: a bulk change shares one moment); PostgreSQL a datetime."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    moment = cache.get(value)
    if moment is None:
        moment = cache[value] = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return moment


def _bucket_filter(column: Any, buckets: Collection[int] | None) -> Any:
    if buckets is None or len(buckets) >= BUCKETS:
        return true()
    return column.in_(sorted(buckets))


async def _product_buckets(
    session: AsyncSession,
    scope: str,
    scope_id: str,
    buckets: Collection[int] | None,
    version: int,
    paths: dict[str, tuple[str, ...]] | None = None,
) -> dict[int, ProductBucket]:
    """The product buckets of one scope (all of them when ``buckets`` is None; then only
    the non-empty ones), each built with one query for the whole set."""
    query = select(
        Product.bucket,
        Product.sku,
        Product.name,
        Product.unit,
        Product.weighed,
        Product.scale_plu,
        Product.category_code,
        Product.vat_rate_bp,
        Product.vat_group,
        Product.version,
    ).where(_bucket_filter(Product.bucket, buckets), Product.active)
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
    products = (await session.execute(query.order_by(Product.bucket, Product.sku))).all()
    codes: dict[str, list[str]] = defaultdict(list)
    if products:
        barcode_rows = await session.execute(
            select(ProductBarcode.sku, ProductBarcode.barcode)
            .join(Product, Product.sku == ProductBarcode.sku)
            .where(_bucket_filter(Product.bucket, buckets))
            .order_by(ProductBarcode.barcode)
        )
        for sku, code in barcode_rows:
            codes[sku].append(code)
        if paths is None:
            paths = await category_paths(session)
    records: dict[int, list[ProductRecord]] = {b: [] for b in buckets or ()}
    for p in products:
        records.setdefault(p.bucket, []).append(
            ProductRecord(
                sku=p.sku,
                name=p.name,
                unit=p.unit,
                weighed=p.weighed,
                scale_plu=p.scale_plu,
                barcodes=tuple(codes.get(p.sku, ())),
                category=p.category_code,
                category_path=(paths or {}).get(p.category_code, ()) if p.category_code else (),
                vat_rate_bp=p.vat_rate_bp,
                vat_group=p.vat_group,
                version=p.version,
            )
        )
    return {
        bucket: ProductBucket(
            scope=scope,  # type: ignore[arg-type]
            scope_id=scope_id or None,
            bucket=bucket,
            version=version,
            products=tuple(items),
        )
        for bucket, items in records.items()
    }


async def _product_bucket(
    session: AsyncSession, scope: str, scope_id: str, bucket: int, version: int
) -> ProductBucket:
    return (await _product_buckets(session, scope, scope_id, (bucket,), version))[bucket]


async def _price_buckets(
    session: AsyncSession,
    scope: str,
    scope_id: str,
    buckets: Collection[int] | None,
    version: int,
    now: datetime,
) -> dict[int, PriceBucket]:
    """The price buckets of one scope, from one query (all non-empty ones when
    ``buckets`` is None). The moments are read raw and parsed once per distinct value:
    SQLAlchemy's per-row datetime processing dominated a bulk publication."""
    rows = await session.execute(
        select(
            PriceEntryRow.bucket,
            PriceEntryRow.sku,
            PriceEntryRow.price,
            type_coerce(PriceEntryRow.effective_at, NullType()),
            PriceEntryRow.version,
            PriceEntryRow.effective_local,
        )
        .join(Product, Product.sku == PriceEntryRow.sku)
        .where(
            PriceEntryRow.scope == scope,
            PriceEntryRow.scope_id == scope_id,
            _bucket_filter(PriceEntryRow.bucket, buckets),
            PriceEntryRow.withdrawn.is_(False),
            Product.active,
        )
    )
    moments: dict[str, datetime] = {}
    by_bucket: dict[int, dict[str, list[PriceCandidate]]] = {b: {} for b in buckets or ()}
    for bucket, sku, price, effective_at, entry_version, local in rows:
        skus = by_bucket.get(bucket)
        if skus is None:
            skus = by_bucket[bucket] = {}
        candidates = skus.get(sku)
        if candidates is None:
            candidates = skus[sku] = []
        candidates.append(
            PriceCandidate(
                scope, price, _utc(effective_at, moments), entry_version, effective_local=local
            )
        )
    # Pruned with a margin: a local-time entry takes effect up to ~26 h apart across zones.
    horizon = now - _PRUNE_MARGIN
    out: dict[int, PriceBucket] = {}
    for bucket, skus in by_bucket.items():
        entries: list[PriceEntry] = []
        for sku in sorted(skus):
            for c in prune_schedule(skus[sku], horizon):
                entries.append(
                    PriceEntry(
                        sku=sku,
                        price=c.price,
                        effective_at=c.effective_at,
                        version=c.version,
                        effective_local=c.effective_local,
                    )
                )
        out[bucket] = PriceBucket(
            scope=scope,  # type: ignore[arg-type]
            scope_id=scope_id or None,
            bucket=bucket,
            version=version,
            entries=tuple(entries),
        )
    return out


async def _price_bucket(
    session: AsyncSession, scope: str, scope_id: str, bucket: int, version: int, now: datetime
) -> PriceBucket:
    return (await _price_buckets(session, scope, scope_id, (bucket,), version, now))[bucket]


def promotion_record(promo: Promotion) -> PromotionRecord:
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


async def _promotion(
    session: AsyncSession, scope: str, scope_id: str, promotion_id: str, version: int
) -> PromotionRecord:
    promo = await session.get(Promotion, promotion_id)
    reaches = promo is not None and promo.active
    if promo is not None and reaches:
        reaches = (not promo.branches) if scope == "all" else scope_id in promo.branches
    if promo is None or not reaches:
        return PromotionRecord(promotion_id=promotion_id, version=version, deleted=True)
    return promotion_record(promo)


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


async def build_snapshot(
    session: AsyncSession, branch_code: str, version: int, now: datetime
) -> list[tuple[str, MasterDataMessage]]:
    """One branch's snapshot: begin mark, the current value of every non-empty key of
    its scopes (as ``SnapshotPart``), end mark. Empty for an unknown or revoked branch."""
    branch = await session.get(Branch, branch_code)
    if branch is None or not branch.active:
        return []
    values: list[tuple[str, SnapshotValue]] = []
    paths = await category_paths(session)
    product_scopes = [("format", branch.format_code)] if branch.format_code else []
    for scope, sid in [*product_scopes, ("branch", branch.code)]:
        products = await _product_buckets(session, scope, sid, None, version, paths)
        for bucket, message in sorted(products.items()):
            if message.products:
                values.append((down_subject(scope, sid, KIND_PRODUCT, bucket_key(bucket)), message))
    for scope, scope_id in branch_scopes(branch.code, branch.format_code, branch.price_zone):
        prices = await _price_buckets(session, scope, scope_id or "", None, version, now)
        for bucket, price_message in sorted(prices.items()):
            if price_message.entries:
                values.append(
                    (down_subject(scope, scope_id, KIND_PRICE, bucket_key(bucket)), price_message)
                )
    promotions = await session.scalars(
        select(Promotion).where(Promotion.active).order_by(Promotion.promotion_id)
    )
    for promo in promotions:
        if not promo.branches:
            subject = down_subject("all", None, KIND_PROMOTION, promo.promotion_id)
        elif branch.code in promo.branches:
            subject = down_subject("branch", branch.code, KIND_PROMOTION, promo.promotion_id)
        else:
            continue
        # At the snapshot's version, not the row's: a branch may hold a later change
        # central lost (its database restored from a backup); the snapshot replaces it.
        record = promotion_record(promo)
        values.append(
            (subject, msgspec.structs.replace(record, version=max(promo.version, version)))
        )
    messages: list[tuple[str, MasterDataMessage]] = [
        (
            snapshot_subject(branch.code, "begin"),
            SnapshotMark(snapshot_id=version, phase="begin", parts=len(values), version=version),
        )
    ]
    messages.extend(
        (
            snapshot_subject(branch.code, f"p{part:06d}"),
            SnapshotPart(snapshot_id=version, part=part, subject=subject, message=value),
        )
        for part, (subject, value) in enumerate(values, start=1)
    )
    messages.append(
        (
            snapshot_subject(branch.code, "end"),
            SnapshotMark(snapshot_id=version, phase="end", parts=len(values), version=version),
        )
    )
    return messages


async def build_messages(
    session: AsyncSession, keys: Sequence[DownKey], version: int, now: datetime
) -> list[tuple[str, MasterDataMessage]]:
    """The messages of a publication pass, in the order of ``keys``: buckets of one
    kind and scope come from one query each; a snapshot key expands to its messages."""
    wanted: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for kind, scope, scope_id, k in keys:
        if kind in (KIND_PRODUCT, KIND_PRICE):
            wanted[(kind, scope, scope_id)].add(parse_bucket_key(k))
    built: dict[tuple[str, str, str], dict[int, ProductBucket] | dict[int, PriceBucket]] = {}
    paths: dict[str, tuple[str, ...]] | None = None
    for (kind, scope, scope_id), buckets in wanted.items():
        if kind == KIND_PRODUCT:
            if paths is None:
                paths = await category_paths(session)
            built[(kind, scope, scope_id)] = await _product_buckets(
                session, scope, scope_id, buckets, version, paths
            )
        else:
            built[(kind, scope, scope_id)] = await _price_buckets(
                session, scope, scope_id, buckets, version, now
            )
    out: list[tuple[str, MasterDataMessage]] = []
    for key in keys:
        kind, scope, scope_id, k = key
        if kind in (KIND_PRODUCT, KIND_PRICE):
            subject = down_subject(scope, scope_id or None, kind, k)
            out.append((subject, built[(kind, scope, scope_id)][parse_bucket_key(k)]))
        elif kind == KIND_SNAPSHOT:
            out.extend(await build_snapshot(session, scope_id, version, now))
        else:
            out.append(await build_message(session, key, version, now))
    return out


async def _stream_mark(js: JetStreamContext) -> VersionMark | None:
    """The down stream's last version mark (None: none, or one that does not decode)."""
    try:
        last = await js.get_last_msg(
            DOWN_STREAM, down_subject("all", None, KIND_VERSION, VERSION_KEY)
        )
    except NotFoundError:
        return None
    try:
        mark = decode_masterdata(last.data or b"")
    except ValueError as exc:
        # Not ours to judge by (only central publishes there): publishing goes on.
        log.warning("the stream's last version mark does not decode: %s", exc)
        return None
    return mark if isinstance(mark, VersionMark) else None


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
        crash_after_catch_up: bool = False,
    ) -> None:
        self._sessionmaker = sessionmaker
        self.failures = FailureLog(log, "master-data publication")
        # Fault injection for the kill test: exit once a pass moved past the stream.
        self.crash_after_catch_up = crash_after_catch_up
        self.batch = batch
        self.window = window
        self.ack_timeout_s = ack_timeout_s
        self.poll_interval_s = poll_interval_s
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.published_messages = 0
        self.last_version = 0
        # Whether this process has compared the database's version with the stream's.
        self._stream_checked = False
        # The stream's version when this process found the database behind it (0: not).
        self.restored_from = 0

    def wake(self) -> None:
        self._wake.set()

    async def check_stream_version(self, js: JetStreamContext) -> int:
        """Compare the database's master-data version with the last one published to
        the stream (its version mark); before the first pass, and before every pass
        that publishes (``publish_pending``).

        The stream holds a higher one only when the database went back in time (restored
        from a backup, losing changes that branches already applied) or when another
        database published into this chain's stream (a process started on a stale copy
        with production's NATS settings). Versions would then be given again, at or below
        what the branches hold, and their version guard would skip every later change
        of those buckets (stale prices at the tills). So the counter jumps past the
        stream's, what waits in the outbox takes a version above it, and every active
        branch gets a snapshot of central's state, which replaces whatever the lost (or
        foreign) changes left at the branch. Returns the stream's version when it did
        that, else 0. Idempotent: a second check finds the counter caught up."""
        async with self._lock, self._sessionmaker() as session, session.begin():
            if session.get_bind().dialect.name == "postgresql":
                got = await session.scalar(select(func.pg_try_advisory_xact_lock(0x6D64_7075_626C)))
                if not got:
                    return 0  # another process publishes: it checks
            return await self._catch_up_with_stream(session, js)

    async def _catch_up_with_stream(self, session: AsyncSession, js: JetStreamContext) -> int:
        """``check_stream_version`` in the caller's transaction (the publication lock held)."""
        mark = await _stream_mark(js)
        ours = await current_version(session)
        if mark is None or mark.version <= ours:
            self._stream_checked = True
            return 0
        await session.execute(
            update(MasterDataCounter)
            .where(MasterDataCounter.name == "version")
            .values(value=mark.version)
        )
        version = await allocate_versions(session)
        await session.execute(
            update(MasterDataOutbox)
            .where(MasterDataOutbox.published_at.is_(None))
            .values(version=version)
        )
        branches = await enqueue_snapshots_of_all_branches(session)
        await record_change(
            session,
            action="masterdata.database_behind_stream",
            target="masterdata",
            before={"version": ours},
            after={"version": version, "stream_version": mark.version, "snapshots": branches},
            actor=RequestAudit(actor="central", actor_role="system", method="NATS"),
        )
        log.error(
            "the database's master-data version (%d) is behind the stream's (%d): restored "
            "from a backup, or another database published into this stream? versions go "
            "on from %d and %d branches get a snapshot",
            ours,
            mark.version,
            version,
            len(branches),
        )
        self._stream_checked = True
        self.restored_from = mark.version
        return mark.version

    async def run(self, js: JetStreamContext, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                sent = await self.publish_pending(js)
            except Exception as exc:
                # NATS or database unavailable: the rows stay pending.
                self.failures.failed(one_line(exc), retry="the rows stay pending, retried")
                sent = 0
                await asyncio.sleep(1.0)
            else:
                self.failures.ok()
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def publish_pending(self, js: JetStreamContext) -> int:
        """One batch: returns how many outbox rows were published."""
        if not self._stream_checked:
            await self.check_stream_version(js)
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
            # Never publish a version the stream already carries (another database
            # published since the last check): one last-message lookup per pass.
            mark = await _stream_mark(js)
            if mark is not None and mark.version > await current_version(session):
                if not postgres:
                    await session.rollback()  # SQLite: write on a fresh snapshot
                await self._catch_up_with_stream(session, js)
                await session.commit()
                if self.crash_after_catch_up:
                    log.error("fault injection: exiting after the catch-up, before publishing")
                    os._exit(CRASH_EXIT_CODE)
                self._wake.set()  # publish what waits at its new versions right away
                return 0
            version = max(r.version for r in rows)
            now = datetime.now(UTC)
            keys = list(dict.fromkeys((r.kind, r.scope, r.scope_id, r.key) for r in rows))
            built = await build_messages(session, keys, version, now)
            messages = [(subject, encode_masterdata(m)) for subject, m in built]
            del built
            messages.append(
                (
                    down_subject("all", None, KIND_VERSION, VERSION_KEY),
                    encode_masterdata(VersionMark(version=version, published_at=now)),
                )
            )
            snapshots = sorted({sid for kind, _, sid, _ in keys if kind == KIND_SNAPSHOT})
            if not postgres:
                # End SQLite's read snapshot: a write on a stale snapshot would fail busy.
                await session.rollback()
            for branch in snapshots:
                # One snapshot per branch in the stream: the parts of an older one go.
                await js.purge_stream(DOWN_STREAM, subject=snapshot_subject(branch, ">"))
            mark_seq = await self._publish(js, messages)
            ids = [r.id for r in rows]
            for start in range(0, len(ids), _CHUNK):
                await session.execute(
                    update(MasterDataOutbox)
                    .where(MasterDataOutbox.id.in_(ids[start : start + _CHUNK]))
                    .values(published_at=now)
                )
            await note_down_seq(session, mark_seq)
            await _raise_counter(session, MARKED, version)
            await session.commit()
        self.published_messages += len(messages)
        self.last_version = version
        return len(rows)

    async def drop_snapshot(self, js: JetStreamContext, branch: str, snapshot_id: int) -> bool:
        """Purge a branch's snapshot parts from the stream once it applied them, unless a
        newer snapshot for it is queued or published (under the publication lock, so a
        pass publishing a newer one cannot interleave)."""
        async with self._lock, self._sessionmaker() as session:
            newer = await session.scalar(
                select(func.count())
                .select_from(MasterDataOutbox)
                .where(
                    MasterDataOutbox.kind == KIND_SNAPSHOT,
                    MasterDataOutbox.scope_id == branch,
                    MasterDataOutbox.version > snapshot_id,
                )
            )
            if newer:
                return False
            await js.purge_stream(DOWN_STREAM, subject=snapshot_subject(branch, ">"))
            return True

    async def _publish(self, js: JetStreamContext, messages: list[tuple[str, bytes]]) -> int:
        """Publish in windows; the version mark (last) only after all others are acked.
        Returns the mark's stream sequence (the pass's highest)."""
        body, mark = messages[:-1], messages[-1]
        for start in range(0, len(body), self.window):
            futures = [await js.publish_async(s, d) for s, d in body[start : start + self.window]]
            # publish_async can hang forever on a server error (NATS.md): bounded wait.
            await asyncio.wait_for(asyncio.gather(*futures), self.ack_timeout_s)
        ack = await js.publish(mark[0], mark[1], timeout=self.ack_timeout_s)
        return int(ack.seq or 0)
