"""Prices: chain base prices, price zones, branch overrides, scheduled changes,
repricing documents, and what each branch should sell at (``protocol.pricing``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, NamedTuple
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import ColumnElement, and_, func, insert, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, NotFoundError, ValidationFailed, check_aware
from central.models import (
    Branch,
    BranchScopeHistory,
    BranchStatus,
    LastSellingPrice,
    PriceEntryRow,
    PriceZone,
    Product,
    Receipt,
    ReceiptLineRow,
    RepricingDocument,
    RepricingLine,
    RepricingLineBranch,
    StockBalance,
    StoreFormat,
)
from central.reports.backlog import summaries_current
from central.services.assortment import branch_carries
from central.services.audit import SUMMARY_KEYS, bulk_summary, record_change
from central.services.catalog import CODE_RE, unit_of_work
from central.services.masterdata_publisher import (
    allocate_versions,
    current_version,
    enqueue,
    marked_version,
    up_to_date,
)
from protocol.limits import Code32, Code64, Text200
from protocol.masterdata import KIND_PRICE, bucket_key, bucket_of
from protocol.pricing import (
    PriceCandidate,
    branch_scopes,
    entry_moment,
    local_to_utc,
    resolve_price,
)
from protocol.units import MinorUnits, format_minor, line_amount

__all__ = [
    "LARGE_CHANGE_FACTOR",
    "PAST_GRACE",
    "BranchPricesAppliedOut",
    "ExpectedPrice",
    "LargeChange",
    "PriceChangeIn",
    "PriceEntryOut",
    "PriceMismatchOut",
    "PriceZoneIn",
    "RepricingBranchOut",
    "RepricingDocumentIn",
    "RepricingDocumentOut",
    "RepricingLineIn",
    "RepricingLineOut",
    "RepricingMomentOut",
    "RepricingPreviewOut",
    "ScopedPrice",
    "approve_repricing",
    "branch_sync_status",
    "check_price",
    "create_price_zone",
    "create_repricing",
    "effective_moment",
    "entries_in_force",
    "expected_price",
    "expected_prices",
    "get_repricing",
    "large_change_text",
    "large_changes",
    "list_price_zones",
    "list_prices",
    "lowest_prices_in_force",
    "not_withdrawn_at",
    "price_mismatches",
    "scopes_at",
    "set_price",
    "set_prices_bulk",
    "withdraw_override",
]

# A moment this far in the past still counts as "now" (clock skew of the caller).
PAST_GRACE = timedelta(seconds=60)
MAX_PRICE = 10**12
SCOPES = ("all", "format", "zone", "branch")


class PriceChangeIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: str
    price: MinorUnits
    scope: str = "all"
    scope_id: str | None = None
    # When it takes effect: a UTC moment, or a wall-clock time in the branches'
    # local time ("2026-12-01T06:00:00"); neither: now.
    effective_at: datetime | None = None
    effective_local: str | None = None
    # A price more than 10x above or below the one in force is refused (422 naming
    # price) unless the caller confirms it was meant.
    confirm_large_change: bool = False


class PriceEntryOut(msgspec.Struct, kw_only=True):
    id: int
    sku: str
    price: int
    scope: str
    scope_id: str | None
    effective_at: datetime
    effective_local: str | None
    version: int
    withdrawn: bool
    # When it was withdrawn (it was in force before); None: not withdrawn, or
    # withdrawn before central recorded when.
    withdrawn_at: datetime | None
    document_id: int | None


class ExpectedPrice(msgspec.Struct, kw_only=True):
    branch: str
    sku: str
    at: datetime
    price: int | None
    scope: str | None
    version: int | None
    # False: the branch does not carry the product (not in its format, excluded, or no
    # format and not included), so its agent has no record of it and its tills cannot
    # sell it; ``price`` is what head office's rules would give if it did.
    in_assortment: bool


class PriceZoneIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: Code32
    name: Text200
    timezone: Code64 = "UTC"


class RepricingLineIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: str
    new_price: MinorUnits
    # Stock on hand to revalue (thousandths); when absent, central's stock balances in
    # the branches the document's scope reaches, when the draft is created.
    stock_milli: int | None = None


class RepricingDocumentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scope: str = "all"
    scope_id: str | None = None
    effective_at: datetime | None = None
    effective_local: str | None = None
    note: Annotated[str, msgspec.Meta(max_length=500)] = ""
    lines: list[RepricingLineIn]


class RepricingBranchOut(msgspec.Struct, kw_only=True):
    """A line's stock at one branch and what the document does to it there: ``draft``
    (not approved yet), ``revalued`` (the document's price replaces ``old_price``),
    ``unaffected`` (another price stays in force there, ``new_price``: nothing is
    revalued) or ``unpriced`` (no price before: the stock gains ``new_value`` of retail
    value, which is no revaluation)."""

    branch: str
    stock_milli: int
    status: str
    old_price: int | None
    new_price: int | None
    old_value: int
    new_value: int
    revaluation: int


class RepricingLineOut(msgspec.Struct, kw_only=True):
    sku: str
    new_price: MinorUnits
    # The scope's own price before (its entries, else the chain's; a branch: its own).
    old_price: int | None
    # All the stock the line covers = revalued + unaffected + unpriced (once approved).
    stock_milli: int
    revalued_stock_milli: int
    # old_value, new_value and revaluation: of the revalued stock only.
    old_value: int
    new_value: int
    revaluation: int
    unaffected_stock_milli: int
    unpriced_stock_milli: int
    unpriced_value: int
    # Branches whose balance is negative (their sum, below 0): listed in ``branches``
    # as ``negative_stock``, outside ``stock_milli`` and never revalued.
    negative_stock_milli: int
    # Empty when the stock was given on the line for a scope of several branches.
    branches: list[RepricingBranchOut]


class RepricingPreviewOut(msgspec.Struct, kw_only=True):
    """A draft's figures as approving it at ``computed_at`` would record them (prices as
    they stand then); not stored: approval computes them again."""

    computed_at: datetime
    lines: list[RepricingLineOut]
    total_revaluation: int
    total_unpriced_value: int


class RepricingMomentOut(msgspec.Struct, kw_only=True):
    """When the document takes effect in the branches of one time zone: planned (a
    draft), or the moment used (approved: never before the approval)."""

    timezone: str
    effective_at: datetime
    # The same moment on the branches' wall clock.
    local: str


class RepricingDocumentOut(msgspec.Struct, kw_only=True):
    id: int
    status: str
    scope: str
    scope_id: str | None
    # A draft: the planned moment (the earliest zone's for effective_local); approved:
    # the moment used, never before approved_at.
    effective_at: datetime
    effective_local: str | None
    # Per time zone of the branches the scope reaches (one for effective_at).
    moments: list[RepricingMomentOut]
    note: str
    created_at: datetime
    approved_at: datetime | None
    lines: list[RepricingLineOut]
    total_revaluation: int
    total_unpriced_value: int
    # A draft only: what approving it now would give (read time, not stored).
    preview: RepricingPreviewOut | None = None


class BranchPricesAppliedOut(msgspec.Struct, kw_only=True):
    branch: str
    applied_version: int
    central_version: int
    published_version: int
    up_to_date: bool
    last_heartbeat_at: datetime | None


class ScopedPrice(NamedTuple):
    """A price and the scope it is set at (``scope_id`` None for the chain)."""

    price: int
    scope: str
    scope_id: str | None

    def describe(self) -> str:
        """The scope in words, for messages: "the chain's", "zone north's"."""
        return "the chain's" if self.scope == "all" else f"{self.scope} {self.scope_id}'s"


class PriceMismatchOut(msgspec.Struct, kw_only=True):
    sku: str
    till_price: int
    expected_price: int | None
    sold_at: datetime
    receipt_id: int


async def _check_scope(session: AsyncSession, scope: str, scope_id: str | None) -> str:
    if scope not in SCOPES:
        raise ValidationFailed(f"scope must be one of {', '.join(SCOPES)}", field="scope")
    if scope == "all":
        if scope_id:
            raise ValidationFailed("the chain scope takes no scope_id", field="scope_id")
        return ""
    if not scope_id:
        raise ValidationFailed(f"scope {scope} needs a scope_id", field="scope_id")
    model = {"format": StoreFormat, "zone": PriceZone, "branch": Branch}[scope]
    if await session.get(model, scope_id) is None:
        raise ValidationFailed(f"unknown {scope} {scope_id!r}", field="scope_id")
    return scope_id


def _reached_by(scope: str, scope_id: str) -> ColumnElement[bool]:
    """The branches a price scope reaches (chain: all), as a condition on ``Branch``."""
    if scope == "format":
        return Branch.format_code == scope_id
    if scope == "zone":
        return Branch.price_zone == scope_id
    if scope == "branch":
        return Branch.code == scope_id
    return true()


async def _reached_zone_branches(
    session: AsyncSession, scope: str, scope_id: str
) -> dict[str, str | None]:
    """Per time zone of the active branches the scope reaches, the first branch code
    there (None: no branch, the price zone's own time zone or UTC)."""
    query = (
        select(Branch.timezone, func.min(Branch.code))
        .where(Branch.active, _reached_by(scope, scope_id))
        .group_by(Branch.timezone)
    )
    zones: dict[str, str | None] = {tz: code for tz, code in await session.execute(query)}
    if not zones and scope == "zone":
        zone = await session.get(PriceZone, scope_id)
        zones = {zone.timezone: None} if zone else {}
    return zones or {"UTC": None}


async def _reached_timezones(session: AsyncSession, scope: str, scope_id: str) -> list[str]:
    return list(await _reached_zone_branches(session, scope, scope_id))


async def effective_moment(
    session: AsyncSession,
    scope: str,
    scope_id: str,
    effective_at: datetime | None,
    effective_local: str | None,
    now: datetime,
    field_prefix: str = "",
) -> tuple[datetime, str | None]:
    """(earliest UTC moment, normalized local text); refuses a moment in the past (a
    local time: in any branch the scope reaches), or both ways of giving it. The moment
    is never before ``now``: a local time a few seconds past (within ``PAST_GRACE``)
    takes effect now, not backdated. The CSV import checks its rows with it too, so its
    dry run refuses what the apply would."""
    if effective_at is not None and effective_local is not None:
        raise ValidationFailed(
            "give effective_at or effective_local, not both", field=f"{field_prefix}effective_local"
        )
    if effective_local is not None:
        try:
            local = datetime.fromisoformat(effective_local)
        except ValueError as exc:
            raise ValidationFailed(
                "effective_local is a local date-time like 2026-12-01T06:00:00",
                field=f"{field_prefix}effective_local",
            ) from exc
        if local.tzinfo is not None:
            raise ValidationFailed(
                "effective_local carries no zone (use effective_at for a UTC moment)",
                field=f"{field_prefix}effective_local",
            )
        text = local.replace(microsecond=0).isoformat()
        zones = await _reached_zone_branches(session, scope, scope_id)
        moments = {tz: local_to_utc(local, tz) for tz in zones}
        tz = min(moments, key=lambda z: (moments[z], z))
        if moments[tz] < now - PAST_GRACE:
            # Name where: the earliest zone's branch, its zone and that moment in UTC.
            where = (
                f"branch {zones[tz]}"
                if zones[tz]
                else ("the chain" if scope == "all" else f"{scope} {scope_id}")
            )
            raise ValidationFailed(
                f"a price change cannot take effect in the past: {text} local time in "
                f"{where} ({tz}) was {moments[tz]:%Y-%m-%d %H:%M:%S}Z",
                field=f"{field_prefix}effective_local",
            )
        # The floor of every branch's moment (protocol.pricing.entry_moment).
        return max(moments[tz], now), text
    if effective_at is None:
        return now, None
    check_aware(effective_at, f"{field_prefix}effective_at")
    if effective_at < now - PAST_GRACE:
        raise ValidationFailed(
            f"a price change cannot take effect in the past: "
            f"{effective_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z is before now",
            field=f"{field_prefix}effective_at",
        )
    return max(effective_at.astimezone(UTC), now), None


def check_price(price: int, field: str) -> None:
    """A selling price is positive (0 would give the product away at every till; a
    free item is a promotion's decision) and in range. The CSV import uses it too."""
    if price <= 0:
        raise ValidationFailed("a price must be positive (0 gives the product away)", field=field)
    if price > MAX_PRICE:
        raise ValidationFailed("price out of range", field=field)


async def set_price(session: AsyncSession, data: PriceChangeIn) -> PriceEntryOut:
    """One price decision at one scope, effective now or scheduled."""
    async with unit_of_work(session):
        now = datetime.now(UTC)
        scope_id = await _check_scope(session, data.scope, data.scope_id)
        check_price(data.price, "price")
        product = await session.get(Product, data.sku)
        if product is None:
            raise ValidationFailed(f"unknown product {data.sku!r}", field="sku")
        if not product.active:
            raise ValidationFailed(f"product {data.sku} is archived", field="sku")
        moment, local = await effective_moment(
            session, data.scope, scope_id, data.effective_at, data.effective_local, now
        )
        if not data.confirm_large_change:
            for large in await large_changes(
                session,
                [(data.sku, data.price)],
                scope=data.scope,
                scope_id=scope_id,
                moment=moment,
            ):
                raise ValidationFailed(
                    f"{large_change_text(large)}; prices are integer minor units (cents): "
                    'send "confirm_large_change": true if this is meant',
                    field="price",
                )
        # Before: the entry in force at this scope at the new price's moment (if any).
        previous = await session.scalar(
            select(PriceEntryRow)
            .where(
                PriceEntryRow.scope == data.scope,
                PriceEntryRow.scope_id == scope_id,
                PriceEntryRow.sku == data.sku,
                PriceEntryRow.withdrawn.is_(False),
                PriceEntryRow.effective_at <= moment,
            )
            .order_by(PriceEntryRow.effective_at.desc(), PriceEntryRow.version.desc())
            .limit(1)
        )
        version = await allocate_versions(session)
        row = PriceEntryRow(
            scope=data.scope,
            scope_id=scope_id,
            sku=data.sku,
            bucket=product.bucket,
            price=data.price,
            effective_at=moment,
            effective_local=local,
            version=version,
            withdrawn=False,
        )
        session.add(row)
        await session.flush()
        await enqueue(
            session, version, [(KIND_PRICE, data.scope, scope_id, bucket_key(product.bucket))]
        )
        out = _entry_out(row)
        await record_change(
            session,
            action="price.set",
            target=f"price:{data.sku}@{data.scope}{':' + scope_id if scope_id else ''}",
            before=_entry_out(previous) if previous is not None else None,
            after=out,
        )
        return out


async def set_prices_bulk(
    session: AsyncSession,
    changes: Sequence[tuple[str, int]],
    *,
    scope: str = "all",
    scope_id: str | None = None,
    effective_at: datetime | None = None,
    effective_local: str | None = None,
    document_id: int | None = None,
    not_before: datetime | None = None,
) -> int:
    """Many prices at one scope and moment (import, repricing): one version each, one
    outbox row per touched bucket. The caller has validated SKUs and prices.
    ``not_before``: the stored moment as the caller computed it (a repricing approved
    late: no branch before approval, ``effective_local`` where it is still ahead)."""
    async with unit_of_work(session):
        now = datetime.now(UTC)
        sid = await _check_scope(session, scope, scope_id)
        if not_before is not None:
            moment, local = not_before, effective_local
        else:
            moment, local = await effective_moment(
                session, scope, sid, effective_at, effective_local, now
            )
        if not changes:
            return 0
        last = await allocate_versions(session, len(changes))
        first = last - len(changes) + 1
        buckets: set[int] = set()
        if session.get_bind().dialect.name == "sqlite":
            buckets = await _insert_entries_sqlite(
                session, changes, scope, sid, moment, local, first, document_id, now
            )
        else:
            rows = []
            for i, (sku, price) in enumerate(changes):
                bucket = bucket_of(sku)
                buckets.add(bucket)
                rows.append(
                    {
                        "scope": scope,
                        "scope_id": sid,
                        "sku": sku,
                        "bucket": bucket,
                        "price": price,
                        "effective_at": moment,
                        "effective_local": local,
                        "version": first + i,
                        "withdrawn": False,
                        "document_id": document_id,
                        "created_at": now,
                    }
                )
            for start in range(0, len(rows), 5000):
                await session.execute(insert(PriceEntryRow), rows[start : start + 5000])
        await enqueue(
            session, last, [(KIND_PRICE, scope, sid, bucket_key(b)) for b in sorted(buckets)]
        )
        return len(changes)


async def _insert_entries_sqlite(
    session: AsyncSession,
    changes: Sequence[tuple[str, int]],
    scope: str,
    scope_id: str,
    moment: datetime,
    local: str | None,
    first_version: int,
    document_id: int | None,
    now: datetime,
) -> set[int]:
    """The rows of ``set_prices_bulk`` straight to the driver's executemany.

    SQLAlchemy's ORM bulk insert compiled and converted every row's two datetimes
    (~3 s for 100,000 rows); here the shared moments are converted once, through the
    columns' own bind processors, so the stored text is exactly what the ORM writes.
    """
    conn = await session.connection()
    dialect = conn.dialect
    table = PriceEntryRow.__table__
    at_bind = table.c.effective_at.type.dialect_impl(dialect).bind_processor(dialect)
    created_bind = table.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    at_value = at_bind(moment) if at_bind else moment
    created_value = created_bind(now) if created_bind else now
    buckets: set[int] = set()
    rows = []
    for i, (sku, price) in enumerate(changes):
        bucket = bucket_of(sku)
        buckets.add(bucket)
        rows.append(
            (
                scope,
                scope_id,
                sku,
                bucket,
                price,
                at_value,
                local,
                first_version + i,
                document_id,
                created_value,
            )
        )
    await conn.exec_driver_sql(
        "INSERT INTO price_entries (scope, scope_id, sku, bucket, price, effective_at, "
        "effective_local, version, withdrawn, document_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
        rows,
    )
    return buckets


async def withdraw_override(session: AsyncSession, *, scope: str, scope_id: str, sku: str) -> int:
    """The zone/format/branch price of a product no longer applies (the chain's does)."""
    async with unit_of_work(session):
        if scope == "all":
            raise ValidationFailed(
                "the chain price is changed, not withdrawn; archive the product instead",
                field="scope",
            )
        sid = await _check_scope(session, scope, scope_id)
        count = await session.scalar(
            select(func.count())
            .select_from(PriceEntryRow)
            .where(
                PriceEntryRow.scope == scope,
                PriceEntryRow.scope_id == sid,
                PriceEntryRow.sku == sku,
                PriceEntryRow.withdrawn.is_(False),
            )
        )
        if not count:
            raise NotFoundError(f"no {scope} price of {sku} at {sid}", field="sku")
        entries = (
            await session.scalars(
                select(PriceEntryRow)
                .where(
                    PriceEntryRow.scope == scope,
                    PriceEntryRow.scope_id == sid,
                    PriceEntryRow.sku == sku,
                    PriceEntryRow.withdrawn.is_(False),
                )
                .order_by(PriceEntryRow.effective_at, PriceEntryRow.version)
                .limit(SUMMARY_KEYS)
            )
        ).all()
        before = {
            "count": int(count),
            "entries": [msgspec.to_builtins(_entry_out(e)) for e in entries],
        }
        version = await allocate_versions(session)
        # Only the entries in force until now: an entry withdrawn earlier keeps its moment.
        await session.execute(
            update(PriceEntryRow)
            .where(
                PriceEntryRow.scope == scope,
                PriceEntryRow.scope_id == sid,
                PriceEntryRow.sku == sku,
                PriceEntryRow.withdrawn.is_(False),
            )
            .values(withdrawn=True, withdrawn_at=datetime.now(UTC))
        )
        await enqueue(session, version, [(KIND_PRICE, scope, sid, bucket_key(bucket_of(sku)))])
        await record_change(
            session,
            action="price.withdraw",
            target=f"price:{sku}@{scope}:{sid}",
            before=before,
            after={"count": 0, "withdrawn": int(count)},
        )
        return int(count)


def _entry_out(row: PriceEntryRow) -> PriceEntryOut:
    return PriceEntryOut(
        id=row.id,
        sku=row.sku,
        price=row.price,
        scope=row.scope,
        scope_id=row.scope_id or None,
        effective_at=row.effective_at,
        effective_local=row.effective_local,
        version=row.version,
        withdrawn=row.withdrawn,
        withdrawn_at=row.withdrawn_at,
        document_id=row.document_id,
    )


async def list_prices(
    session: AsyncSession,
    *,
    sku: str | None = None,
    scope: str | None = None,
    scope_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[PriceEntryOut], int]:
    query = select(PriceEntryRow)
    if sku:
        query = query.where(PriceEntryRow.sku == sku)
    if scope:
        query = query.where(PriceEntryRow.scope == scope)
    if scope_id is not None:
        query = query.where(PriceEntryRow.scope_id == scope_id)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(
        query.order_by(PriceEntryRow.sku, PriceEntryRow.effective_at, PriceEntryRow.version)
        .limit(limit)
        .offset(offset)
    )
    return [_entry_out(r) for r in rows], int(total or 0)


async def _branch(session: AsyncSession, code: str) -> Branch:
    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code}", field="branch")
    return branch


def not_withdrawn_at(at: datetime) -> ColumnElement[bool]:
    """Price entries not withdrawn at ``at`` (an override withdrawn later was in force
    then; one withdrawn before central recorded when counts at no moment)."""
    return or_(PriceEntryRow.withdrawn.is_(False), PriceEntryRow.withdrawn_at > at)


async def scopes_at(
    session: AsyncSession, branches: Sequence[Branch], at: datetime
) -> dict[str, tuple[str | None, str | None]]:
    """Per branch code, the (format, price zone) in force at ``at``: its scope history's
    latest row from before ``at``; before its first row, the first row (prices set before
    a branch was registered reached it by its first scopes); no history: its current."""
    query = select(
        BranchScopeHistory.branch,
        BranchScopeHistory.valid_from,
        BranchScopeHistory.format_code,
        BranchScopeHistory.price_zone,
    ).order_by(BranchScopeHistory.branch, BranchScopeHistory.valid_from, BranchScopeHistory.id)
    if len(branches) <= 500:
        query = query.where(BranchScopeHistory.branch.in_([b.code for b in branches]))
    first: dict[str, tuple[str | None, str | None]] = {}
    then: dict[str, tuple[str | None, str | None]] = {}
    for code, valid_from, format_code, price_zone in await session.execute(query):
        first.setdefault(code, (format_code, price_zone))
        if valid_from <= at:
            then[code] = (format_code, price_zone)
    return {
        b.code: then.get(b.code) or first.get(b.code) or (b.format_code, b.price_zone)
        for b in branches
    }


async def expected_prices(
    session: AsyncSession, branch: Branch, skus: Sequence[str], at: datetime
) -> dict[str, PriceCandidate]:
    """What the branch's tills must charge at ``at``: the shared resolution rules, over
    the entries in force then (withdrawn later or not at all) at the scopes the branch
    had then."""
    return await expected_prices_each(session, branch, dict.fromkeys(skus, at))


async def expected_prices_each(
    session: AsyncSession, branch: Branch, moments: Mapping[str, datetime]
) -> dict[str, PriceCandidate]:
    """``expected_prices`` with a moment of its own per product: the same rules over the
    entries in force at that moment (withdrawn later or not at all) and the scopes the
    branch had then, read once for all the products (per 2,000 of them)."""
    history = (
        await session.execute(
            select(
                BranchScopeHistory.valid_from,
                BranchScopeHistory.format_code,
                BranchScopeHistory.price_zone,
            )
            .where(BranchScopeHistory.branch == branch.code)
            .order_by(BranchScopeHistory.valid_from, BranchScopeHistory.id)
        )
    ).all()

    def scopes_then(at: datetime) -> list[tuple[str, str | None]]:
        # As scopes_at: the latest row from before ``at``, else the first, else current.
        then = [(f, z) for valid_from, f, z in history if valid_from <= at]
        if then:
            return branch_scopes(branch.code, *then[-1])
        if history:
            return branch_scopes(branch.code, history[0][1], history[0][2])
        return branch_scopes(branch.code, branch.format_code, branch.price_zone)

    ever = {
        scope
        for at in (*(row[0] for row in history), datetime.min.replace(tzinfo=UTC))
        for scope in scopes_then(at)
    }
    scope_match = or_(
        *(
            and_(PriceEntryRow.scope == scope, PriceEntryRow.scope_id == (scope_id or ""))
            for scope, scope_id in sorted(ever, key=str)
        )
    )
    scopes_of: dict[datetime, list[tuple[str, str | None]]] = {}
    entry = PriceEntryRow
    skus = sorted(moments)
    candidates: dict[str, list[PriceCandidate]] = defaultdict(list)
    for start in range(0, len(skus), 2000):
        rows = await session.execute(
            select(
                entry.sku,
                entry.scope,
                entry.scope_id,
                entry.price,
                entry.effective_at,
                entry.effective_local,
                entry.version,
                entry.withdrawn,
                entry.withdrawn_at,
            ).where(entry.sku.in_(skus[start : start + 2000]), scope_match)
        )
        for sku, scope, scope_id, price, effective_at, local, version, gone, gone_at in rows:
            at = moments[sku]
            # not_withdrawn_at(at), in Python: each product has its own moment
            if gone and (gone_at is None or gone_at <= at):
                continue
            if at not in scopes_of:
                scopes_of[at] = scopes_then(at)
            if (scope, scope_id or None) not in scopes_of[at]:
                continue
            candidates[sku].append(
                PriceCandidate(
                    scope, price, entry_moment(effective_at, local, branch.timezone), version
                )
            )
    out: dict[str, PriceCandidate] = {}
    for sku, entries in candidates.items():
        got = resolve_price(entries, moments[sku])
        if got is not None:
            out[sku] = got
    return out


async def entries_in_force(
    session: AsyncSession, at: datetime, skus: Sequence[str] | None = None
) -> dict[tuple[str, str, str], tuple[datetime, int, int]]:
    """Per (sku, scope, scope_id), the entry in force at ``at`` at that scope: (its
    moment, version, price); of the given SKUs (read per 2,000), or of all."""
    latest: dict[tuple[str, str, str], tuple[datetime, int, int]] = {}
    chunks = [None] if skus is None else [skus[i : i + 2000] for i in range(0, len(skus), 2000)]
    for chunk in chunks:
        query = select(
            PriceEntryRow.sku,
            PriceEntryRow.scope,
            PriceEntryRow.scope_id,
            PriceEntryRow.effective_at,
            PriceEntryRow.version,
            PriceEntryRow.price,
        ).where(PriceEntryRow.effective_at <= at, not_withdrawn_at(at))
        if chunk is not None:
            query = query.where(PriceEntryRow.sku.in_(chunk))
        for sku, scope, scope_id, effective_at, version, price in await session.execute(query):
            key = (sku, scope, scope_id)
            if key not in latest or (effective_at, version) > latest[key][:2]:
                latest[key] = (effective_at, version, price)
    return latest


async def lowest_prices_in_force(
    session: AsyncSession,
    skus: Sequence[str],
    at: datetime,
    branches: Sequence[Branch] | None = None,
) -> dict[str, ScopedPrice]:
    """Per SKU, the lowest price in force at ``at`` at any scope (the chain's, and each
    format's, zone's and branch's own): what some branch may be selling it at. With
    ``branches``, only at the scopes that reach one of them (their own, their formats'
    and zones', the chain's): never above what any of them charges. SKUs without a
    price in force are left out. Each price comes with the scope it is set at (the
    lowest's, the first by scope rank and id of equal ones), for the caller to name it."""
    reaching: set[tuple[str, str]] | None = None
    if branches is not None:
        reaching = {
            (scope, scope_id or "")
            for b in branches
            for scope, scope_id in branch_scopes(b.code, b.format_code, b.price_zone)
        }
    latest = await entries_in_force(session, at, skus)
    if reaching is not None:
        latest = {k: v for k, v in latest.items() if (k[1], k[2] or "") in reaching}
    out: dict[str, ScopedPrice] = {}
    for (sku, scope, sid), (_at, _version, price) in sorted(
        latest.items(), key=lambda item: (item[0][0], SCOPES.index(item[0][1]), item[0][2])
    ):
        if sku not in out or price < out[sku].price:
            out[sku] = ScopedPrice(price, scope, sid or None)
    return out


async def expected_price(
    session: AsyncSession, branch_code: str, sku: str, at: datetime | None = None
) -> ExpectedPrice:
    check_aware(at, "at")
    branch = await _branch(session, branch_code)
    if await session.get(Product, sku) is None:
        raise NotFoundError(f"no product {sku}", field="sku")
    moment = at or datetime.now(UTC)
    got = (await expected_prices(session, branch, [sku], moment)).get(sku)
    return ExpectedPrice(
        branch=branch_code,
        sku=sku,
        at=moment,
        price=got.price if got else None,
        scope=got.scope if got else None,
        version=got.version if got else None,
        in_assortment=await branch_carries(session, branch, sku),
    )


async def create_price_zone(session: AsyncSession, data: PriceZoneIn) -> PriceZoneIn:
    from central.services.branches import check_timezone

    async with unit_of_work(session):
        if not CODE_RE.fullmatch(data.code):
            raise ValidationFailed("zone code: 1-32 letters, digits, '-' or '_'", field="code")
        check_timezone(data.timezone)
        if await session.get(PriceZone, data.code) is not None:
            raise ConflictError(f"price zone {data.code} exists", field="code")
        session.add(PriceZone(code=data.code, name=data.name, timezone=data.timezone))
        await session.flush()
        await record_change(session, action="zone.create", target=f"zone:{data.code}", after=data)
        return data


async def list_price_zones(session: AsyncSession) -> list[PriceZoneIn]:
    rows = await session.scalars(select(PriceZone).order_by(PriceZone.code))
    return [PriceZoneIn(code=z.code, name=z.name, timezone=z.timezone) for z in rows]


# --- repricing documents ------------------------------------------------------------


async def _stock_in_scope(
    session: AsyncSession, scope: str, scope_id: str, skus: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Central's stock balance per SKU and branch, in the active branches the scope
    reaches (a negative balance too: it is listed apart, never revalued)."""
    query = (
        select(StockBalance.sku, StockBalance.branch, StockBalance.quantity_milli)
        .join(Branch, Branch.code == StockBalance.branch)
        .where(Branch.active, StockBalance.sku.in_(skus), StockBalance.quantity_milli != 0)
        .order_by(StockBalance.sku, StockBalance.branch)
    )
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for sku, branch, qty in await session.execute(query.where(_reached_by(scope, scope_id))):
        out[sku][branch] = int(qty)
    return out


async def create_repricing(
    session: AsyncSession, data: RepricingDocumentIn
) -> RepricingDocumentOut:
    async with unit_of_work(session):
        now = datetime.now(UTC)
        sid = await _check_scope(session, data.scope, data.scope_id)
        moment, local = await effective_moment(
            session, data.scope, sid, data.effective_at, data.effective_local, now
        )
        if not data.lines:
            raise ValidationFailed("a repricing document needs lines", field="lines")
        skus = [line.sku for line in data.lines]
        known = set(
            (
                await session.scalars(
                    select(Product.sku).where(Product.sku.in_(skus), Product.active)
                )
            ).all()
        )
        seen: set[str] = set()
        for i, line in enumerate(data.lines):
            if line.sku not in known:
                raise ValidationFailed(f"unknown product {line.sku!r}", field=f"lines[{i}].sku")
            if line.sku in seen:
                raise ValidationFailed(f"{line.sku} appears twice", field=f"lines[{i}].sku")
            seen.add(line.sku)
            check_price(line.new_price, f"lines[{i}].new_price")
            if line.stock_milli is not None and line.stock_milli < 0:
                raise ValidationFailed("stock cannot be negative", field=f"lines[{i}].stock_milli")
        doc = RepricingDocument(
            status="draft",
            scope=data.scope,
            scope_id=sid,
            effective_at=moment,
            effective_local=local,
            note=data.note,
        )
        session.add(doc)
        await session.flush()
        # A line without stock revalues what central holds in the scope now, branch by
        # branch: the draft shows it, and approval revalues it at each branch's own
        # prices (a count of the store's own may differ). A stock given for one branch
        # is that branch's; for several it cannot be split.
        held = await _stock_in_scope(
            session, data.scope, sid, [ln.sku for ln in data.lines if ln.stock_milli is None]
        )
        rows = []
        for line in data.lines:
            if line.stock_milli is None:
                per_branch = held.get(line.sku, {})
            elif data.scope == "branch":
                per_branch = {sid: line.stock_milli}
            else:
                per_branch = {}
            row = RepricingLine(
                document_id=doc.id,
                sku=line.sku,
                new_price=line.new_price,
                stock_milli=(
                    sum(q for q in per_branch.values() if q > 0)
                    if line.stock_milli is None
                    else line.stock_milli
                ),
            )
            rows.append((row, per_branch))
        session.add_all(row for row, _ in rows)
        await session.flush()
        session.add_all(
            RepricingLineBranch(
                line_id=row.id,
                branch=code,
                stock_milli=qty,
                status="draft" if qty > 0 else "negative_stock",
            )
            for row, per_branch in rows
            for code, qty in sorted(per_branch.items())
        )
        await session.flush()
        out = await _repricing_out(session, doc)
        await record_change(
            session,
            action="repricing.create",
            target=f"repricing:{doc.id}",
            after=_repricing_summary(out),
        )
        return out


def _repricing_summary(doc: RepricingDocumentOut) -> dict[str, object]:
    """A repricing document for the audit log: its header, counts, the first lines
    (without their branches: a chain's document would list every branch per line)."""
    header = msgspec.to_builtins(doc)
    header.pop("lines")
    # The preview's figures are not the document's (it is recomputed on approval).
    header.pop("preview", None)
    first = [msgspec.to_builtins(line) for line in doc.lines[:SUMMARY_KEYS]]
    for line in first:
        line.pop("branches")
    return {
        **header,
        "lines": bulk_summary(line.sku for line in doc.lines),
        "first_lines": first,
    }


async def _document_rows(
    session: AsyncSession, doc: RepricingDocument
) -> tuple[Sequence[RepricingLine], dict[int, list[RepricingLineBranch]]]:
    """A document's lines, and each line's branch rows (by branch)."""
    lines = (
        await session.scalars(
            select(RepricingLine)
            .where(RepricingLine.document_id == doc.id)
            .order_by(RepricingLine.id)
        )
    ).all()
    by_line: dict[int, list[RepricingLineBranch]] = defaultdict(list)
    for b in await session.scalars(
        select(RepricingLineBranch)
        .join(RepricingLine, RepricingLine.id == RepricingLineBranch.line_id)
        .where(RepricingLine.document_id == doc.id)
        .order_by(RepricingLineBranch.line_id, RepricingLineBranch.branch)
    ):
        by_line[b.line_id].append(b)
    return lines, by_line


def _lines_out(
    lines: Sequence[RepricingLine], by_line: Mapping[int, Sequence[RepricingLineBranch]]
) -> list[RepricingLineOut]:
    out: list[RepricingLineOut] = []
    for ln in lines:
        rows = by_line.get(ln.id, ())
        out.append(
            RepricingLineOut(
                sku=ln.sku,
                new_price=ln.new_price,
                old_price=ln.old_price,
                stock_milli=ln.stock_milli,
                revalued_stock_milli=ln.revalued_stock_milli,
                old_value=ln.old_value,
                new_value=ln.new_value,
                revaluation=ln.new_value - ln.old_value,
                unaffected_stock_milli=ln.unaffected_stock_milli,
                unpriced_stock_milli=ln.unpriced_stock_milli,
                unpriced_value=ln.unpriced_value,
                negative_stock_milli=sum(b.stock_milli for b in rows if b.stock_milli < 0),
                branches=[
                    RepricingBranchOut(
                        branch=b.branch,
                        stock_milli=b.stock_milli,
                        status=b.status,
                        old_price=b.old_price,
                        new_price=b.new_price,
                        old_value=b.old_value,
                        new_value=b.new_value,
                        revaluation=b.new_value - b.old_value if b.status == "revalued" else 0,
                    )
                    for b in rows
                ],
            )
        )
    return out


async def _preview(
    session: AsyncSession,
    doc: RepricingDocument,
    lines: Sequence[RepricingLine],
    by_line: Mapping[int, Sequence[RepricingLineBranch]],
) -> RepricingPreviewOut:
    """What approving the draft now would record, on copies (nothing is written)."""
    now = datetime.now(UTC)
    copies = [
        RepricingLine(id=ln.id, sku=ln.sku, new_price=ln.new_price, stock_milli=ln.stock_milli)
        for ln in lines
    ]
    rows = {
        line_id: [
            RepricingLineBranch(line_id=line_id, branch=b.branch, stock_milli=b.stock_milli)
            for b in branch_rows
        ]
        for line_id, branch_rows in by_line.items()
    }
    await _revalue(session, doc, copies, rows, max(doc.effective_at, now))
    out = _lines_out(copies, rows)
    return RepricingPreviewOut(
        computed_at=now,
        lines=out,
        total_revaluation=sum(ln.revaluation for ln in out),
        total_unpriced_value=sum(ln.unpriced_value for ln in out),
    )


async def _repricing_out(session: AsyncSession, doc: RepricingDocument) -> RepricingDocumentOut:
    lines, by_line = await _document_rows(session, doc)
    status = doc.status
    if status == "approved" and doc.effective_at <= datetime.now(UTC):
        status = "effective"
    out_lines = _lines_out(lines, by_line)
    preview = await _preview(session, doc, lines, by_line) if doc.status == "draft" else None
    zones = await _reached_timezones(session, doc.scope, doc.scope_id)
    moments = []
    for tz in sorted(zones) if doc.effective_local else ["UTC"]:
        at = entry_moment(doc.effective_at, doc.effective_local, tz)
        local = at.astimezone(ZoneInfo(tz)).replace(tzinfo=None, microsecond=0)
        moments.append(RepricingMomentOut(timezone=tz, effective_at=at, local=local.isoformat()))
    return RepricingDocumentOut(
        id=doc.id,
        status=status,
        scope=doc.scope,
        scope_id=doc.scope_id or None,
        effective_at=doc.effective_at,
        effective_local=doc.effective_local,
        moments=moments,
        note=doc.note,
        created_at=doc.created_at,
        approved_at=doc.approved_at,
        lines=out_lines,
        total_revaluation=sum(ln.revaluation for ln in out_lines),
        total_unpriced_value=sum(ln.unpriced_value for ln in out_lines),
        preview=preview,
    )


async def get_repricing(session: AsyncSession, document_id: int) -> RepricingDocumentOut:
    doc = await session.get(RepricingDocument, document_id)
    if doc is None:
        raise NotFoundError(f"no repricing document {document_id}", field="document_id")
    return await _repricing_out(session, doc)


async def _scope_price_before(
    session: AsyncSession, scope: str, scope_id: str, skus: Sequence[str], before: datetime
) -> dict[str, int]:
    """The price in force just before ``before`` at this scope (the scope's own
    entries, falling back to the chain price), per SKU (read per 2,000 of them)."""
    candidates: dict[str, list[PriceCandidate]] = defaultdict(list)
    own = [("all", "")] if scope == "all" else [(scope, scope_id), ("all", "")]
    for start in range(0, len(skus), 2000):
        rows = await session.execute(
            select(
                PriceEntryRow.sku,
                PriceEntryRow.scope,
                PriceEntryRow.price,
                PriceEntryRow.effective_at,
                PriceEntryRow.version,
            ).where(
                PriceEntryRow.sku.in_(skus[start : start + 2000]),
                PriceEntryRow.withdrawn.is_(False),
                PriceEntryRow.effective_at < before,
                or_(
                    *(
                        and_(PriceEntryRow.scope == sc, PriceEntryRow.scope_id == sid)
                        for sc, sid in own
                    )
                ),
            )
        )
        for sku, row_scope, price, effective_at, version in rows:
            candidates[sku].append(PriceCandidate(row_scope, price, effective_at, version))
    out: dict[str, int] = {}
    for sku, entries in candidates.items():
        got = resolve_price(entries, before - timedelta(microseconds=1))
        if got is not None:
            out[sku] = got.price
    return out


# A new price this many times above or below the one in force is refused unless
# confirmed: a price typed in cents where euros were meant (259 for 2.59) or the
# reverse reaches every till within seconds.
LARGE_CHANGE_FACTOR = 10


class LargeChange(NamedTuple):
    sku: str
    old: int
    new: int


async def large_changes(
    session: AsyncSession,
    changes: Sequence[tuple[str, int]],
    *,
    scope: str,
    scope_id: str,
    moment: datetime,
) -> list[LargeChange]:
    """The changes whose new price is more than ``LARGE_CHANGE_FACTOR`` times above or
    below the price in force at the scope (else the chain's) just before ``moment``; a
    product without a price there is not checked."""
    old = await _scope_price_before(session, scope, scope_id, [sku for sku, _ in changes], moment)
    return [
        LargeChange(sku, old[sku], new)
        for sku, new in changes
        if sku in old
        and (new > old[sku] * LARGE_CHANGE_FACTOR or new * LARGE_CHANGE_FACTOR < old[sku])
    ]


def large_change_text(change: LargeChange) -> str:
    return (
        f"{change.sku}: new price {format_minor(change.new)} is more than "
        f"{LARGE_CHANGE_FACTOR}x {'above' if change.new > change.old else 'below'} "
        f"the price in force {format_minor(change.old)}"
    )


# Outranks every stored version: the document's entry, written on approval, is head
# office's latest decision at its scope and moment.
_DOCUMENT_VERSION = 2**62


async def _prices_at_branches(
    session: AsyncSession,
    doc: RepricingDocument,
    new_prices: dict[str, int],
    codes: Sequence[str],
    moment: datetime,
) -> dict[tuple[str, str], tuple[int | None, int | None, bool]]:
    """Per (SKU, branch): the branch's price just before the document takes effect
    there, its price from then on, and whether that is the document's (a more specific
    scope's price, or the scope no longer reaching the branch, leaves it unaffected).
    Entries scheduled before the document's moment count; the branch's scopes and its
    local time are those of that moment."""
    branches = list((await session.scalars(select(Branch).where(Branch.code.in_(codes)))).all())
    scopes = await scopes_at(session, branches, moment)
    skus = sorted(new_prices)
    # Per SKU and (scope, scope id): a branch reads only the four scopes reaching it.
    entries: dict[str, dict[tuple[str, str | None], list[PriceEntryRow]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for start in range(0, len(skus), 2000):
        rows = await session.execute(
            select(PriceEntryRow).where(
                PriceEntryRow.sku.in_(skus[start : start + 2000]),
                PriceEntryRow.withdrawn.is_(False),
            )
        )
        for (row,) in rows:
            entries[row.sku][(row.scope, row.scope_id or None)].append(row)
    own = (doc.scope, doc.scope_id or None)
    out: dict[tuple[str, str], tuple[int | None, int | None, bool]] = {}
    for branch in branches:
        reach = branch_scopes(branch.code, *scopes[branch.code])
        at = entry_moment(moment, doc.effective_local, branch.timezone)
        for sku in skus:
            candidates = [
                PriceCandidate(
                    e.scope,
                    e.price,
                    entry_moment(e.effective_at, e.effective_local, branch.timezone),
                    e.version,
                )
                for scope in reach
                for e in entries[sku].get(scope, ())
            ]
            before = resolve_price(candidates, at - timedelta(microseconds=1))
            mine = PriceCandidate(doc.scope, new_prices[sku], at, _DOCUMENT_VERSION)
            after = resolve_price([*candidates, mine] if own in reach else candidates, at)
            out[(sku, branch.code)] = (
                before.price if before else None,
                after.price if after else None,
                after is mine,
            )
    return out


def _revalue_line(
    ln: RepricingLine,
    rows: Sequence[RepricingLineBranch],
    prices: dict[tuple[str, str], tuple[int | None, int | None, bool]],
) -> None:
    """Fill a line and its branch rows: only stock whose price the document changes is
    revalued, each branch's at its own old price."""
    ln.old_value = ln.new_value = ln.revalued_stock_milli = 0
    ln.unaffected_stock_milli = ln.unpriced_stock_milli = ln.unpriced_value = 0
    if not rows:
        # A stock given for several branches: at the scope's own old price.
        if ln.old_price is None:
            ln.unpriced_stock_milli = ln.stock_milli
            ln.unpriced_value = line_amount(ln.new_price, ln.stock_milli)
        else:
            ln.revalued_stock_milli = ln.stock_milli
            ln.old_value = line_amount(ln.old_price, ln.stock_milli)
            ln.new_value = line_amount(ln.new_price, ln.stock_milli)
        return
    for b in rows:
        b.old_price, b.new_price, applies = prices.get((ln.sku, b.branch), (None, None, False))
        b.old_value = b.new_value = 0
        if b.stock_milli < 0:
            # Sold ahead of its receipt: nothing on hand to revalue (the goods that
            # come in are valued at the price then); listed apart with its quantity.
            b.status = "negative_stock"
        elif not applies:
            b.status = "unaffected"
            ln.unaffected_stock_milli += b.stock_milli
        elif b.old_price is None:
            b.status = "unpriced"
            b.new_value = line_amount(ln.new_price, b.stock_milli)
            ln.unpriced_stock_milli += b.stock_milli
            ln.unpriced_value += b.new_value
        else:
            b.status = "revalued"
            b.old_value = line_amount(b.old_price, b.stock_milli)
            b.new_value = line_amount(ln.new_price, b.stock_milli)
            ln.revalued_stock_milli += b.stock_milli
            ln.old_value += b.old_value
            ln.new_value += b.new_value


async def _revalue(
    session: AsyncSession,
    doc: RepricingDocument,
    lines: Sequence[RepricingLine],
    by_line: Mapping[int, Sequence[RepricingLineBranch]],
    moment: datetime,
) -> None:
    """Fill the lines and their branch rows for the document taking effect at ``moment``
    (each branch: at its own moment from then on), with the prices as they stand now
    (changes made after the draft count; changes after approval do not revise it)."""
    codes = {b.branch for rows in by_line.values() for b in rows}
    if doc.scope == "branch":
        codes.add(doc.scope_id)
    prices = await _prices_at_branches(
        session, doc, {ln.sku: ln.new_price for ln in lines}, sorted(codes), moment
    )
    old = await _scope_price_before(
        session, doc.scope, doc.scope_id, [ln.sku for ln in lines], moment
    )
    for ln in lines:
        if doc.scope == "branch":
            ln.old_price = prices.get((ln.sku, doc.scope_id), (None, None, False))[0]
        else:
            ln.old_price = old.get(ln.sku)
        _revalue_line(ln, by_line.get(ln.id, []), prices)


async def approve_repricing(session: AsyncSession, document_id: int) -> RepricingDocumentOut:
    """Draft -> approved: the new prices are scheduled and the stock revaluation recorded."""
    async with unit_of_work(session):
        doc = await session.get(RepricingDocument, document_id, with_for_update=True)
        if doc is None:
            raise NotFoundError(f"no repricing document {document_id}", field="document_id")
        if doc.status != "draft":
            raise ConflictError(f"document is {doc.status}, not draft", field="status")
        now = datetime.now(UTC)
        # Approved late (its moment, or some zone's local moment, has passed): the
        # prices take effect at approval there, never before; the draft's stock stays.
        moment = max(doc.effective_at, now)
        lines, by_line = await _document_rows(session, doc)
        before = _repricing_summary(await _repricing_out(session, doc))
        await _revalue(session, doc, lines, by_line, moment)
        await set_prices_bulk(
            session,
            [(ln.sku, ln.new_price) for ln in lines],
            scope=doc.scope,
            scope_id=doc.scope_id or None,
            effective_local=doc.effective_local,
            document_id=doc.id,
            not_before=moment,
        )
        # The document shows the moment used, not the one planned.
        doc.effective_at = moment
        doc.status = "approved"
        doc.approved_at = now
        await session.flush()
        out = await _repricing_out(session, doc)
        await record_change(
            session,
            action="repricing.approve",
            target=f"repricing:{doc.id}",
            before=before,
            after=_repricing_summary(out),
        )
        return out


# --- what the branches have applied ------------------------------------------------


async def branch_sync_status(session: AsyncSession) -> list[BranchPricesAppliedOut]:
    central = await current_version(session)
    # What a branch can have applied: the last version mark, not the counter (a product
    # in no assortment bumps it and publishes nothing).
    published = await marked_version(session)
    rows = await session.execute(
        select(Branch.code, BranchStatus.applied_version, BranchStatus.received_at)
        .outerjoin(BranchStatus, BranchStatus.branch == Branch.code)
        .where(Branch.active)
        .order_by(Branch.code)
    )
    return [
        BranchPricesAppliedOut(
            branch=code,
            applied_version=int(applied or 0),
            central_version=central,
            published_version=published,
            up_to_date=up_to_date(applied, published, central),
            last_heartbeat_at=received,
        )
        for code, applied, received in rows
    ]


async def price_mismatches(
    session: AsyncSession, branch_code: str, *, limit: int = 100
) -> list[PriceMismatchOut]:
    """Products whose latest till price at this branch differs from the price head
    office's rules give for that branch at that moment.

    The latest till prices come from the report summary kept at ingestion (one row per
    product), the expected prices from one read of the products' entries per 2,000: a
    branch selling a 20,000-product catalog is checked in a few queries, not one per
    product over every receipt line."""
    branch = await _branch(session, branch_code)
    await summaries_current(session)
    last = LastSellingPrice
    sold = (
        await session.execute(
            select(last.sku, last.unit_price, last.sold_at)
            .where(last.branch == branch_code)
            .order_by(last.sku)
        )
    ).all()
    expected = await expected_prices_each(session, branch, {sku: at for sku, _, at in sold})
    out: list[PriceMismatchOut] = []
    for sku, till_price, sold_at in sold:
        want = expected.get(sku)
        if want is None or want.price != till_price:
            out.append(
                PriceMismatchOut(
                    sku=sku,
                    till_price=till_price,
                    expected_price=want.price if want else None,
                    sold_at=sold_at,
                    receipt_id=await _receipt_of(session, branch_code, sku, till_price, sold_at),
                )
            )
            if len(out) >= limit:
                break
    return out


async def _receipt_of(
    session: AsyncSession, branch_code: str, sku: str, unit_price: int, sold_at: datetime
) -> int:
    """The receipt that sold ``sku`` at ``unit_price`` at ``sold_at`` (the first if two
    did): only looked up for the mismatches shown."""
    receipt_id = await session.scalar(
        select(func.min(Receipt.id))
        .join(ReceiptLineRow, ReceiptLineRow.receipt_id == Receipt.id)
        .where(
            Receipt.branch == branch_code,
            Receipt.occurred_at == sold_at,
            ReceiptLineRow.sku == sku,
            ReceiptLineRow.unit_price == unit_price,
        )
    )
    assert receipt_id is not None, (branch_code, sku, sold_at)
    return int(receipt_id)
