"""Promotions: percent or amount off, or N-for-M, for products or categories, for
chosen branches (or the whole chain) and a time window. Evaluated at the till by
``protocol.promotions`` with the same rules central documents."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, NotFoundError, ValidationFailed, check_aware
from central.models import Branch, Category, Product, Promotion
from central.services.audit import record_change
from central.services.catalog import CODE_RE, unit_of_work
from central.services.masterdata_publisher import (
    DownKey,
    allocate_versions,
    category_paths,
    enqueue,
)
from central.services.pricing import lowest_prices_in_force
from protocol.limits import Code32, Code64, Text200
from protocol.masterdata import KIND_PROMOTION
from protocol.units import format_minor

__all__ = [
    "PromotionIn",
    "PromotionOut",
    "check_category_change",
    "create_promotion",
    "get_promotion",
    "list_promotions",
    "promoted_skus",
    "withdraw_promotion",
]

TYPES = ("percent", "amount", "n_for_m")


class PromotionIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # The wire limits of the agents' promotions (and of central's columns).
    promotion_id: Code64
    name: Text200 = ""
    type: str
    percent_bp: int = 0
    amount: int = 0
    n: int = 0
    m: int = 0
    skus: list[Code64] = msgspec.field(default_factory=list)
    categories: list[Code32] = msgspec.field(default_factory=list)
    # Empty: every branch.
    branches: list[Code32] = msgspec.field(default_factory=list)
    starts_at: datetime
    ends_at: datetime


class PromotionOut(msgspec.Struct, kw_only=True):
    promotion_id: str
    name: str
    type: str
    percent_bp: int
    amount: int
    n: int
    m: int
    skus: list[str]
    categories: list[str]
    branches: list[str]
    starts_at: datetime
    ends_at: datetime
    active: bool
    version: int


def _out(p: Promotion) -> PromotionOut:
    return PromotionOut(
        promotion_id=p.promotion_id,
        name=p.name,
        type=p.type,
        percent_bp=p.percent_bp,
        amount=p.amount,
        n=p.n,
        m=p.m,
        skus=list(p.skus),
        categories=list(p.categories),
        branches=list(p.branches),
        starts_at=p.starts_at,
        ends_at=p.ends_at,
        active=p.active,
        version=p.version,
    )


def _keys(promotion_id: str, branches: list[str]) -> list[DownKey]:
    if not branches:
        return [(KIND_PROMOTION, "all", "", promotion_id)]
    return [(KIND_PROMOTION, "branch", b, promotion_id) for b in branches]


def _check_fields(data: PromotionIn, now: datetime) -> None:
    if not CODE_RE.fullmatch(data.promotion_id):
        raise ValidationFailed(
            "promotion id: 1-32 letters, digits, '-' or '_'", field="promotion_id"
        )
    if data.type not in TYPES:
        raise ValidationFailed(f"type is one of {', '.join(TYPES)}", field="type")
    if data.type == "percent" and not 0 < data.percent_bp <= 10000:
        raise ValidationFailed("percent_bp is 1..10000 (100 = 1 %)", field="percent_bp")
    if data.type == "amount" and data.amount <= 0:
        raise ValidationFailed("amount off must be positive", field="amount")
    if data.type == "n_for_m" and not data.n > data.m >= 1:
        raise ValidationFailed("N-for-M needs n > m >= 1", field="n")
    if not data.skus and not data.categories:
        raise ValidationFailed("a promotion needs products or categories", field="skus")
    check_aware(data.starts_at, "starts_at")
    check_aware(data.ends_at, "ends_at")
    if data.ends_at <= data.starts_at:
        raise ValidationFailed("ends_at must be after starts_at", field="ends_at")
    if data.ends_at <= now:
        raise ValidationFailed("the promotion would already be over", field="ends_at")


async def _check_references(session: AsyncSession, data: PromotionIn) -> None:
    for field, model, values in (
        ("skus", Product, data.skus),
        ("categories", Category, data.categories),
        ("branches", Branch, data.branches),
    ):
        for i, value in enumerate(values):
            row = await session.get(model, value)
            if row is None or (isinstance(row, Product) and not row.active):
                noun = {"skus": "sku", "categories": "category", "branches": "branch"}[field]
                raise ValidationFailed(f"unknown {noun} {value!r}", field=f"{field}[{i}]")


async def _check_amount(session: AsyncSession, data: PromotionIn, now: datetime) -> None:
    """An amount off must be below the price of every product it reaches, or the till
    gives the product away: the lowest price in force now at any scope (chain, format,
    zone, branch) reaching the promotion's branches (any branch for a chain-wide one),
    for the products it names and for every active product of its
    categories' subtrees (a category promotion reaches them all). A product without a
    price in force cannot be sold and is not checked; a price lowered later, or a
    product moved into the category later, is not checked either: the till never
    discounts a line by more than its price (``protocol.promotions``)."""
    if data.type != "amount":
        return
    skus = list(dict.fromkeys(data.skus))
    if data.categories:
        paths = await category_paths(session)
        wanted = set(data.categories)
        subtree = [code for code, path in paths.items() if wanted.intersection(path)]
        skus += [
            sku
            for sku in (
                await session.scalars(
                    select(Product.sku)
                    .where(Product.active, Product.category_code.in_(subtree))
                    .order_by(Product.sku)
                )
            ).all()
            if sku not in skus
        ]
    # A promotion of some branches is checked against what they charge; one of the
    # whole chain (no branches) against the lowest price anywhere.
    branches = None
    if data.branches:
        branches = list(await session.scalars(select(Branch).where(Branch.code.in_(data.branches))))
    prices = await lowest_prices_in_force(session, skus, now, branches)
    for sku in skus:
        got = prices.get(sku)
        if got is not None and data.amount >= got.price:
            # Name the scope: the price to look at may be a zone's or a branch's.
            raise ValidationFailed(
                f"amount off {format_minor(data.amount)} is not below the price of {sku} "
                f"in force now ({format_minor(got.price)}, {got.describe()} price)",
                field="amount",
            )


async def _check_overlap(
    session: AsyncSession, data: PromotionIn, moved: Mapping[str, str | None] | None = None
) -> None:
    """One product has at most one promotion at a time in a branch. A category promotion
    reaches its whole subtree (``protocol.promotions``), so it overlaps a promotion of a
    product of that subtree and a promotion of the category itself, of an ancestor or
    of a descendant: the till would otherwise pick one of them silently (the best for
    the customer), which head office did not decide. ``moved``: products whose category
    is about to change (SKU -> new category), checked as if it had."""
    others = (
        await session.scalars(
            select(Promotion).where(
                Promotion.active,
                Promotion.starts_at < data.ends_at,
                Promotion.ends_at > data.starts_at,
                Promotion.promotion_id != data.promotion_id,
            )
        )
    ).all()
    others = [
        o
        for o in others
        if not (data.branches and o.branches and not set(data.branches) & set(o.branches))
    ]
    if not others:
        return
    paths = await category_paths(session)
    skus = set(data.skus).union(*(o.skus for o in others))
    product_category = dict(
        (
            await session.execute(
                select(Product.sku, Product.category_code).where(Product.sku.in_(sorted(skus)))
            )
        ).all()
    )
    product_category.update(moved or {})

    def lineage(category: str | None) -> tuple[str, ...]:
        """The category and its ancestors (root first); empty without a category."""
        if category is None:
            return ()
        return paths.get(category, (category,))

    for other in others:
        theirs_skus = set(other.skus)
        theirs_categories = set(other.categories)
        # The categories whose promotions reach the other's products.
        theirs_reached = {c for s in other.skus for c in lineage(product_category.get(s))}
        for i, sku in enumerate(data.skus):
            covering = theirs_categories.intersection(lineage(product_category.get(sku)))
            if sku in theirs_skus or covering:
                via = f" (category {sorted(covering)[0]})" if sku not in theirs_skus else ""
                raise ConflictError(
                    f"{sku} is already in promotion {other.promotion_id}{via} at that time",
                    field=f"skus[{i}]",
                )
        for i, category in enumerate(data.categories):
            related = {
                c for c in theirs_categories if category in lineage(c) or c in lineage(category)
            }
            if related:
                raise ConflictError(
                    f"category {category} overlaps category {sorted(related)[0]} of promotion "
                    f"{other.promotion_id} at that time",
                    field=f"categories[{i}]",
                )
            if category in theirs_reached:
                sku = next(s for s in other.skus if category in lineage(product_category.get(s)))
                raise ConflictError(
                    f"category {category} holds {sku}, already in promotion "
                    f"{other.promotion_id} at that time",
                    field=f"categories[{i}]",
                )


async def promoted_skus(session: AsyncSession) -> set[str]:
    """The products named by an active promotion that has not ended."""
    rows = await session.scalars(
        select(Promotion.skus).where(Promotion.active, Promotion.ends_at > datetime.now(UTC))
    )
    return {sku for skus in rows for sku in skus}


async def check_category_change(session: AsyncSession, sku: str, category: str | None) -> None:
    """Moving a product into ``category`` must not put it in two promotions at once: each
    running or future promotion naming the product is checked, from now on, with the
    overlap rules of creating it (``_check_overlap``) as if the product had moved. A 409
    naming ``category``."""
    now = datetime.now(UTC)
    own = [
        p
        for p in (
            await session.scalars(
                select(Promotion)
                .where(Promotion.active, Promotion.ends_at > now)
                .order_by(Promotion.promotion_id)
            )
        ).all()
        if sku in p.skus
    ]
    for promo in own:
        window = PromotionIn(
            promotion_id=promo.promotion_id,
            type=promo.type,
            skus=list(promo.skus),
            categories=list(promo.categories),
            branches=list(promo.branches),
            starts_at=max(promo.starts_at, now),
            ends_at=promo.ends_at,
        )
        try:
            await _check_overlap(session, window, moved={sku: category})
        except ConflictError as exc:
            raise ConflictError(
                f"moving {sku} into category {category} would put it in two promotions at "
                f"once ({promo.promotion_id} names it): {exc.detail}",
                field="category",
            ) from exc


async def create_promotion(session: AsyncSession, data: PromotionIn) -> PromotionOut:
    async with unit_of_work(session):
        now = datetime.now(UTC)
        _check_fields(data, now)
        if await session.get(Promotion, data.promotion_id) is not None:
            raise ConflictError(f"promotion {data.promotion_id} exists", field="promotion_id")
        await _check_references(session, data)
        await _check_amount(session, data, now)
        await _check_overlap(session, data)
        version = await allocate_versions(session)
        promo = Promotion(
            promotion_id=data.promotion_id,
            name=data.name,
            type=data.type,
            percent_bp=data.percent_bp,
            amount=data.amount,
            n=data.n,
            m=data.m,
            skus=sorted(set(data.skus)),
            categories=sorted(set(data.categories)),
            branches=sorted(set(data.branches)),
            starts_at=data.starts_at.astimezone(UTC),
            ends_at=data.ends_at.astimezone(UTC),
            active=True,
            version=version,
        )
        session.add(promo)
        await session.flush()
        await enqueue(session, version, _keys(promo.promotion_id, promo.branches))
        out = _out(promo)
        await record_change(
            session, action="promotion.create", target=f"promotion:{promo.promotion_id}", after=out
        )
        return out


async def withdraw_promotion(session: AsyncSession, promotion_id: str) -> PromotionOut:
    """The promotion no longer applies anywhere. Withdrawing one already withdrawn is a
    no-op answering its state (a client retrying after a lost answer gets the same one,
    as archiving an archived product does): no new version, nothing published; the
    request is on file in the audit log (before = after), as every write request is."""
    async with unit_of_work(session):
        promo = await session.get(Promotion, promotion_id)
        if promo is None:
            raise NotFoundError(f"no promotion {promotion_id}", field="promotion_id")
        before = _out(promo)
        if not promo.active:
            await record_change(
                session,
                action="promotion.withdraw",
                target=f"promotion:{promotion_id}",
                before=before,
                after=before,
            )
            return before
        version = await allocate_versions(session)
        promo.active = False
        promo.version = version
        await session.flush()
        await enqueue(session, version, _keys(promo.promotion_id, promo.branches))
        out = _out(promo)
        await record_change(
            session,
            action="promotion.withdraw",
            target=f"promotion:{promotion_id}",
            before=before,
            after=out,
        )
        return out


async def get_promotion(session: AsyncSession, promotion_id: str) -> PromotionOut:
    promo = await session.get(Promotion, promotion_id)
    if promo is None:
        raise NotFoundError(f"no promotion {promotion_id}", field="promotion_id")
    return _out(promo)


async def list_promotions(
    session: AsyncSession, *, active: bool | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[PromotionOut], int]:
    query = select(Promotion)
    if active is not None:
        query = query.where(Promotion.active.is_(active))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.scalars(query.order_by(Promotion.promotion_id).limit(limit).offset(offset))
    return [_out(p) for p in rows], int(total or 0)
