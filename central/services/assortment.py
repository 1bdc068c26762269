"""Assortment: store formats (clusters), the products each sells, per-branch exceptions.

A branch sells its format's products plus its own inclusions minus its own
exclusions, and receives exactly those product records on the down stream: a
product some branch of a format excludes is published per branch to the others
instead of once for the format (``masterdata_publisher.product_targets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.models import AssortmentException, Branch, FormatProduct, Product, StoreFormat
from central.services.audit import bulk_summary, record_change
from central.services.catalog import CODE_RE, unit_of_work
from central.services.masterdata_publisher import allocate_versions, enqueue, product_targets
from protocol.limits import Code32, Text200

__all__ = [
    "AssortmentChange",
    "AssortmentExceptionIn",
    "AssortmentExceptionList",
    "FormatIn",
    "branch_assortment",
    "branch_carries",
    "change_format_products",
    "create_format",
    "list_formats",
    "remove_exception",
    "set_exception",
    "set_exceptions",
]


class FormatIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Longer than their columns: a 500 on PostgreSQL before.
    code: Code32
    name: Text200


class AssortmentChange(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    add: list[str] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)


class AssortmentExceptionIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: str
    # true: the branch sells it although its format does not; false: it does not sell it.
    include: bool


# A bulk form of the exceptions' PUT: at least one, at most a whole catalog.
MAX_EXCEPTIONS = 50_000
AssortmentExceptionList = Annotated[
    list[AssortmentExceptionIn], msgspec.Meta(min_length=1, max_length=MAX_EXCEPTIONS)
]


async def create_format(session: AsyncSession, data: FormatIn) -> FormatIn:
    async with unit_of_work(session):
        if not CODE_RE.fullmatch(data.code):
            raise ValidationFailed("format code: 1-32 letters, digits, '-' or '_'", field="code")
        if await session.get(StoreFormat, data.code) is not None:
            raise ConflictError(f"format {data.code} exists", field="code")
        session.add(StoreFormat(code=data.code, name=data.name))
        await session.flush()
        await record_change(
            session, action="format.create", target=f"format:{data.code}", after=data
        )
        return data


async def list_formats(session: AsyncSession) -> list[FormatIn]:
    rows = await session.scalars(select(StoreFormat).order_by(StoreFormat.code))
    return [FormatIn(code=f.code, name=f.name) for f in rows]


async def _known_skus(
    session: AsyncSession, skus: Sequence[str], field: str, suffix: str = ""
) -> None:
    found: set[str] = set()
    for start in range(0, len(skus), 2000):
        found.update(
            (
                await session.scalars(
                    select(Product.sku).where(Product.sku.in_(skus[start : start + 2000]))
                )
            ).all()
        )
    for i, sku in enumerate(skus):
        if sku not in found:
            raise ValidationFailed(f"unknown product {sku!r}", field=f"{field}[{i}]{suffix}")


async def change_format_products(
    session: AsyncSession, format_code: str, change: AssortmentChange
) -> int:
    """Add and remove products of a format's assortment; returns the new size."""
    async with unit_of_work(session):
        if await session.get(StoreFormat, format_code) is None:
            raise NotFoundError(f"no format {format_code}", field="format")
        await _known_skus(session, change.add, "add")
        await _known_skus(session, change.remove, "remove")
        both = set(change.add) & set(change.remove)
        if both:
            raise ValidationFailed(f"{sorted(both)[0]} both added and removed", field="remove")
        touched = list(dict.fromkeys([*change.add, *change.remove]))
        size_before = await _format_size(session, format_code)
        before = await product_targets(session, touched)
        existing: set[str] = set()
        for start in range(0, len(change.add), 2000):
            existing.update(
                (
                    await session.scalars(
                        select(FormatProduct.sku).where(
                            FormatProduct.format_code == format_code,
                            FormatProduct.sku.in_(change.add[start : start + 2000]),
                        )
                    )
                ).all()
            )
        new = [
            {"format_code": format_code, "sku": s}
            for s in dict.fromkeys(change.add)
            if s not in existing
        ]
        for start in range(0, len(new), 5000):
            await session.execute(insert(FormatProduct), new[start : start + 5000])
        for start in range(0, len(change.remove), 2000):
            await session.execute(
                delete(FormatProduct).where(
                    FormatProduct.format_code == format_code,
                    FormatProduct.sku.in_(change.remove[start : start + 2000]),
                )
            )
        after = await product_targets(session, touched)
        version = await allocate_versions(session)
        await enqueue(session, version, sorted(before | after))
        size = await _format_size(session, format_code)
        # Possibly thousands of SKUs: counts and the first keys of each list.
        await record_change(
            session,
            action="format.products",
            target=f"format:{format_code}",
            before={"products": size_before},
            after={
                "products": size,
                "added": bulk_summary(s["sku"] for s in new),
                "removed": bulk_summary(dict.fromkeys(change.remove)),
            },
        )
        return size


async def _format_size(session: AsyncSession, format_code: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(FormatProduct)
            .where(FormatProduct.format_code == format_code)
        )
        or 0
    )


async def _branch(session: AsyncSession, code: str) -> Branch:
    branch = await session.get(Branch, code)
    if branch is None:
        raise NotFoundError(f"no branch {code}", field="branch")
    return branch


async def _apply_exceptions(
    session: AsyncSession, branch_code: str, items: Sequence[AssortmentExceptionIn], field: str
) -> dict[str, bool]:
    """Validate every item, then set them all with one version and one outbox batch;
    returns the include flag each SKU had before (absent: no exception). An item at
    fault is a 422 naming ``{field}[i].sku`` before anything is written."""
    await _branch(session, branch_code)
    skus = [item.sku for item in items]
    seen: dict[str, int] = {}
    for i, sku in enumerate(skus):
        if sku in seen:
            raise ValidationFailed(
                f"{sku!r} is given twice (first at [{seen[sku]}])", field=f"{field}[{i}].sku"
            )
        seen[sku] = i
    await _known_skus(session, skus, field, ".sku")
    before = await product_targets(session, skus)
    previous: dict[str, bool] = {}
    for start in range(0, len(skus), 2000):
        rows = await session.execute(
            select(AssortmentException.sku, AssortmentException.include).where(
                AssortmentException.branch == branch_code,
                AssortmentException.sku.in_(skus[start : start + 2000]),
            )
        )
        previous.update((sku, bool(include)) for sku, include in rows)
    new = [
        {"branch": branch_code, "sku": item.sku, "include": item.include}
        for item in items
        if item.sku not in previous
    ]
    for start in range(0, len(new), 5000):
        await session.execute(insert(AssortmentException), new[start : start + 5000])
    for include in (True, False):
        changed = [
            i.sku
            for i in items
            if i.include is include and i.sku in previous and previous[i.sku] is not include
        ]
        for start in range(0, len(changed), 2000):
            await session.execute(
                update(AssortmentException)
                .where(
                    AssortmentException.branch == branch_code,
                    AssortmentException.sku.in_(changed[start : start + 2000]),
                )
                .values(include=include)
            )
    await session.flush()
    after = await product_targets(session, skus)
    version = await allocate_versions(session)
    await enqueue(session, version, sorted(before | after))
    return previous


async def set_exception(
    session: AsyncSession, branch_code: str, data: AssortmentExceptionIn
) -> AssortmentExceptionIn:
    async with unit_of_work(session):
        if await session.get(Product, data.sku) is None:
            await _branch(session, branch_code)  # an unknown branch is a 404 first
            raise ValidationFailed(f"unknown product {data.sku!r}", field="sku")
        previous = await _apply_exceptions(session, branch_code, [data], "")
        include = previous.get(data.sku)
        await record_change(
            session,
            action="assortment.set_exception",
            target=f"assortment:{branch_code}:{data.sku}",
            before=None if include is None else {"sku": data.sku, "include": include},
            after=data,
        )
        return data


async def set_exceptions(
    session: AsyncSession, branch_code: str, items: Sequence[AssortmentExceptionIn]
) -> list[AssortmentExceptionIn]:
    """Many exceptions of one branch at once, all or nothing: one version, one
    publication of the buckets they touch, one audit record (counts and first SKUs)."""
    if not items:
        # The framework does not apply the list's length bounds inside the body's union.
        raise ValidationFailed("an empty list: send at least one exception", field="body")
    if len(items) > MAX_EXCEPTIONS:
        raise ValidationFailed(f"more than {MAX_EXCEPTIONS} exceptions at once", field="body")
    async with unit_of_work(session):
        previous = await _apply_exceptions(session, branch_code, items, "")
        await record_change(
            session,
            action="assortment.set_exceptions",
            target=f"assortment:{branch_code}",
            before={"existing": len(previous)},
            after={
                "included": bulk_summary(i.sku for i in items if i.include),
                "excluded": bulk_summary(i.sku for i in items if not i.include),
                "new": len(items) - len(previous),
            },
        )
        return list(items)


async def remove_exception(session: AsyncSession, branch_code: str, sku: str) -> None:
    async with unit_of_work(session):
        row = await session.get(AssortmentException, (branch_code, sku))
        if row is None:
            raise NotFoundError(f"no exception for {sku} at {branch_code}", field="sku")
        before = await product_targets(session, [sku])
        previous = {"sku": row.sku, "include": row.include}
        await session.delete(row)
        await session.flush()
        after = await product_targets(session, [sku])
        version = await allocate_versions(session)
        await enqueue(session, version, sorted(before | after))
        await record_change(
            session,
            action="assortment.remove_exception",
            target=f"assortment:{branch_code}:{sku}",
            before=previous,
            after=None,
        )


async def branch_assortment(session: AsyncSession, branch_code: str) -> list[str]:
    """The active SKUs a branch sells, sorted."""
    branch = await _branch(session, branch_code)
    skus: set[str] = set()
    if branch.format_code:
        skus.update(
            (
                await session.scalars(
                    select(FormatProduct.sku).where(FormatProduct.format_code == branch.format_code)
                )
            ).all()
        )
    exceptions = (
        await session.execute(
            select(AssortmentException.sku, AssortmentException.include).where(
                AssortmentException.branch == branch_code
            )
        )
    ).all()
    for sku, include in exceptions:
        if include:
            skus.add(sku)
        else:
            skus.discard(sku)
    if not skus:
        return []
    active: set[str] = set()
    ordered = sorted(skus)
    for start in range(0, len(ordered), 2000):
        active.update(
            (
                await session.scalars(
                    select(Product.sku).where(
                        Product.sku.in_(ordered[start : start + 2000]), Product.active
                    )
                )
            ).all()
        )
    return sorted(active)


async def branch_carries(session: AsyncSession, branch: Branch, sku: str) -> bool:
    """Whether ``branch`` sells ``sku`` (``branch_assortment`` for one product): an
    active product of its format that it does not exclude, or one it includes. A branch
    without a format carries only its inclusions: products reach a branch only at its
    format's or its own scope, and an agent sells only products whose record it has."""
    product = await session.get(Product, sku)
    if product is None or not product.active:
        return False
    exception = await session.get(AssortmentException, (branch.code, sku))
    if exception is not None:
        return exception.include
    if not branch.format_code:
        return False
    return await session.get(FormatProduct, (branch.format_code, sku)) is not None
