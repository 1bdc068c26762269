"""The agent's view of its catalog: what a till may sell and at which price now.

Sales pricing and the till's product lookup go through these functions only, so
the way master data is stored and resolved can change behind them.

The catalog is head office's master data as applied from the down stream
(``branch_agent.masterdata``, tables in ``masterdata_models``); the price at a
moment is resolved from the entries of every scope the branch belongs to with
``protocol.pricing`` (the rules central uses), promotions with
``protocol.promotions``. Until the first master data has arrived, the local demo
catalog (``products``/``product_barcodes``, ``make run``) is used instead.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Engine, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from branch_agent.db import read_connection
from branch_agent.direct_sql import DirectStatement
from branch_agent.masterdata_models import FormerProduct, MdPrice, MdProduct, MdPromotion
from branch_agent.models import Product, ProductBarcode
from protocol.codec import WireDecodeError
from protocol.masterdata import PromotionRecord, decode_masterdata
from protocol.pricing import PriceCandidate, entry_moment, resolve_price
from protocol.promotions import PromoLine, evaluate_promotions

__all__ = [
    "BasketLine",
    "CatalogItem",
    "FormerItem",
    "LineDiscount",
    "find_former_products",
    "find_product",
    "find_products",
    "local_timezone",
    "promotion_discounts",
    "search_products",
    "set_local_timezone",
    "sku_for_scale_plu",
]

log = logging.getLogger(__name__)

_timezone = {"name": "UTC"}


def set_local_timezone(name: str) -> None:
    """The branch's IANA zone: prices head office gave in local time take effect in it."""
    _timezone["name"] = name


def local_timezone() -> str:
    return _timezone["name"]


class CatalogItem(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    unit: str
    weighed: bool
    scale_plu: int | None
    vat_rate_bp: int
    vat_group: str
    category: str | None
    # The effective price at the moment asked for, in minor units per unit.
    price: int
    # The master-data version this price came from (0: local demo data).
    price_version: int = 0


def _demo_item(product: Product) -> CatalogItem:
    return CatalogItem(
        sku=product.sku,
        name=product.name,
        unit=product.unit,
        weighed=product.weighed,
        scale_plu=product.scale_plu,
        vat_rate_bp=product.vat_rate_bp,
        vat_group=product.vat_group,
        category=product.category,
        price=product.price,
    )


# Databases known to hold master data: once central's catalog has arrived it never
# goes back to the demo seed, so the check costs one query per process, not per lookup.
_with_master_data: set[str] = set()


async def _has_master_data(session: AsyncSession) -> bool:
    bind = session.get_bind()
    key = str(bind.url if isinstance(bind, Engine) else bind.engine.url)
    if key in _with_master_data:
        return True
    reader = read_connection(bind)
    if reader is not None:
        found = bool(reader.fetch("SELECT 1 FROM md_products LIMIT 1"))
    else:
        found = (await session.scalar(select(MdProduct.sku).limit(1))) is not None
    if found:
        _with_master_data.add(key)
    return found


# One round trip for a till lookup: the product (its most specific scope first) and
# every price entry of it, resolved in Python by the shared rules.
_ITEM_COLUMNS = (
    "SELECT p.sku, p.name, p.unit, p.weighed, p.scale_plu, p.vat_rate_bp, p.vat_group, "
    "p.category, pr.scope, pr.price, pr.effective_at, pr.effective_local, pr.version "
    "FROM md_products AS p LEFT JOIN md_prices AS pr ON pr.sku = p.sku "
)
_SCOPE_ORDER = (
    " ORDER BY CASE p.scope WHEN 'branch' THEN 0 WHEN 'zone' THEN 1 WHEN 'format' THEN 2 ELSE 3 END"
)
_ITEM_BY_BARCODE = (
    _ITEM_COLUMNS
    + "WHERE p.sku = (SELECT b.sku FROM md_barcodes AS b WHERE b.barcode = ? LIMIT 1)"
    + _SCOPE_ORDER
)
_ITEM_BY_SKU = _ITEM_COLUMNS + "WHERE p.sku = ?" + _SCOPE_ORDER


def _sqlite_moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def _md_item_one_query(
    session: AsyncSession, code: str, at: datetime, *, by_barcode: bool
) -> CatalogItem | None:
    sql = _ITEM_BY_BARCODE if by_barcode else _ITEM_BY_SKU
    reader = read_connection(session.get_bind())
    rows: Sequence[Sequence[Any]]
    if reader is not None:
        rows = reader.fetch(sql, (code,))
    else:
        rows = (await session.execute(text(sql.replace("?", ":code")), {"code": code})).all()
    return _item_from_rows(rows, at)


def _item_from_rows(
    rows: Sequence[Sequence[Any]], at: datetime, *, priced: bool = True
) -> CatalogItem | None:
    """(product columns, price entry columns) rows of one product -> the priced item
    (``priced=False``: also a product without a price in force, at price 0)."""
    if not rows:
        return None
    first = rows[0]
    sku = first[0]
    tz = local_timezone()
    # (scope, price, effective_at, effective_local, version) of each entry, once.
    candidates = {tuple(r[8:13]) for r in rows if r[8] is not None and r[0] == sku}
    price = resolve_price(
        (
            PriceCandidate(scope, amount, entry_moment(_sqlite_moment(eff), local, tz), version)
            for scope, amount, eff, local, version in sorted(candidates, key=str)
        ),
        at,
    )
    if price is None and priced:
        # Listed but not priced (yet): not sellable.
        return None
    return CatalogItem(
        sku=sku,
        name=first[1],
        unit=first[2],
        weighed=bool(first[3]),
        scale_plu=first[4],
        vat_rate_bp=first[5],
        vat_group=first[6],
        category=first[7],
        price=price.price if price else 0,
        price_version=price.version if price else 0,
    )


async def _price(session: AsyncSession, sku: str, at: datetime) -> PriceCandidate | None:
    rows = await session.execute(
        select(
            MdPrice.scope,
            MdPrice.price,
            MdPrice.effective_at,
            MdPrice.effective_local,
            MdPrice.version,
        ).where(MdPrice.sku == sku)
    )
    tz = local_timezone()
    return resolve_price(
        (
            PriceCandidate(scope, price, entry_moment(effective_at, local, tz), version)
            for scope, price, effective_at, local, version in rows
        ),
        at,
    )


async def _md_item(session: AsyncSession, sku: str, at: datetime) -> CatalogItem | None:
    product = await session.scalar(select(MdProduct).where(MdProduct.sku == sku).limit(1))
    if product is None:
        return None
    price = await _price(session, sku, at)
    if price is None:
        # Listed but not priced (yet): not sellable.
        return None
    return CatalogItem(
        sku=product.sku,
        name=product.name,
        unit=product.unit,
        weighed=product.weighed,
        scale_plu=product.scale_plu,
        vat_rate_bp=product.vat_rate_bp,
        vat_group=product.vat_group,
        category=product.category,
        price=price.price,
        price_version=price.version,
    )


async def find_product(
    session: AsyncSession, *, sku: str | None = None, barcode: str | None = None, at: datetime
) -> CatalogItem | None:
    """The sellable product with this SKU or barcode, priced at ``at``; None if not sold here."""
    if await _has_master_data(session):
        if barcode:
            return await _md_item_one_query(session, barcode, at, by_barcode=True)
        if not sku:
            return None
        return await _md_item_one_query(session, sku, at, by_barcode=False)
    if barcode:
        sku = await session.scalar(
            select(ProductBarcode.sku).where(ProductBarcode.barcode == barcode)
        )
    if not sku:
        return None
    product = await session.get(Product, sku)
    if product is None or not product.active:
        return None
    return _demo_item(product)


# SKUs per lookup query (SQLite builds other than Debian's bind at most 32,766).
_LOOKUP_CHUNK = 500
# Many products' rows at once, grouped by SKU (most specific scope first in each): the
# direct reader fills in "(?, ?, ...)", the session an expanding parameter.
_ITEMS_BY_SKUS = (
    _ITEM_COLUMNS + "WHERE p.sku IN {} " + _SCOPE_ORDER.replace(" ORDER BY", " ORDER BY p.sku,")
)
_ITEMS_BY_SKUS_STMT = text(_ITEMS_BY_SKUS.format(":skus")).bindparams(
    bindparam("skus", expanding=True)
)


async def find_products(
    session: AsyncSession, skus: Sequence[str], *, at: datetime, priced: bool = True
) -> dict[str, CatalogItem]:
    """:func:`find_product` for many SKUs (a count sheet, a stock document): one query
    per 500, not one per line. Products not sold here are left out; with
    ``priced=False`` a product of the branch's assortment without a price in force yet
    is in (price 0): goods arrive and are counted before they go on sale."""
    wanted = sorted(set(skus))
    found: dict[str, CatalogItem] = {}
    master_data = await _has_master_data(session)
    reader = read_connection(session.get_bind())
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        if not master_data:
            products = await session.scalars(
                select(Product).where(Product.sku.in_(chunk), Product.active)
            )
            found.update((p.sku, _demo_item(p)) for p in products)
            continue
        rows: Sequence[Sequence[Any]]
        if reader is not None:
            marks = f"({', '.join('?' * len(chunk))})"
            rows = reader.fetch(_ITEMS_BY_SKUS.format(marks), tuple(chunk))
        else:
            rows = (await session.execute(_ITEMS_BY_SKUS_STMT, {"skus": chunk})).all()
        for _, group in itertools.groupby(rows, key=lambda r: r[0]):
            item = _item_from_rows(list(group), at, priced=priced)
            if item is not None:
                found[item.sku] = item
    return found


class FormerItem(msgspec.Struct, frozen=True, kw_only=True):
    """A product that is not in the branch's assortment any more, as it last was."""

    sku: str
    name: str
    unit: str
    weighed: bool


async def find_former_products(session: AsyncSession, skus: Sequence[str]) -> dict[str, FormerItem]:
    """Products of ``skus`` that left the branch's assortment (removed at central,
    archived): what the applier kept of them in ``former_products`` when their last
    replica row went; before master data, the demo catalog's inactive products.
    Products never seen here are left out. Stock of them may still be in the store:
    the stock documents that take it out need to know pieces from weighed."""
    wanted = sorted(set(skus))
    found: dict[str, FormerItem] = {}
    master_data = await _has_master_data(session)
    for start in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[start : start + _LOOKUP_CHUNK]
        if master_data:
            rows = await session.execute(
                select(
                    FormerProduct.sku, FormerProduct.name, FormerProduct.unit, FormerProduct.weighed
                ).where(FormerProduct.sku.in_(chunk))
            )
        else:
            rows = await session.execute(
                select(Product.sku, Product.name, Product.unit, Product.weighed).where(
                    Product.sku.in_(chunk), ~Product.active
                )
            )
        found.update(
            (sku, FormerItem(sku=sku, name=name, unit=unit, weighed=bool(weighed)))
            for sku, name, unit, weighed in rows
        )
    return found


async def sku_for_scale_plu(session: AsyncSession, plu: int) -> str | None:
    """The product a label scale's PLU stands for."""
    if await _has_master_data(session):
        reader = read_connection(session.get_bind())
        if reader is not None:
            found = reader.fetch("SELECT sku FROM md_products WHERE scale_plu = ? LIMIT 1", (plu,))
            return str(found[0][0]) if found else None
        return await session.scalar(
            select(MdProduct.sku).where(MdProduct.scale_plu == plu).limit(1)
        )
    return await session.scalar(select(Product.sku).where(Product.scale_plu == plu).limit(1))


async def search_products(
    session: AsyncSession, text: str, *, at: datetime, limit: int = 20
) -> list[CatalogItem]:
    # The typed text is matched literally: its own % and _ are not wildcards.
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped}%"
    if await _has_master_data(session):
        skus = (
            await session.scalars(
                select(MdProduct.sku)
                .where(
                    or_(
                        func.lower(MdProduct.name).like(pattern, escape="\\"),
                        func.lower(MdProduct.sku).like(pattern, escape="\\"),
                    )
                )
                .group_by(MdProduct.sku)
                .order_by(func.min(MdProduct.name), MdProduct.sku)
                .limit(limit * 2)
            )
        ).all()
        items = []
        for sku in skus:
            item = await _md_item(session, sku, at)
            if item is not None:
                items.append(item)
            if len(items) >= limit:
                break
        return items
    rows = await session.scalars(
        select(Product)
        .where(
            Product.active,
            (Product.name.ilike(pattern, escape="\\")) | (Product.sku.ilike(pattern, escape="\\")),
        )
        .order_by(Product.name)
        .limit(limit)
    )
    return [_demo_item(p) for p in rows]


class BasketLine(msgspec.Struct, frozen=True, kw_only=True):
    """A priced line before promotions, as the sale service sees it."""

    sku: str
    category: str | None
    quantity_milli: int
    unit_price: int
    gross: int


class LineDiscount(msgspec.Struct, frozen=True, kw_only=True):
    amount: int = 0
    promotion_id: str | None = None


# Built once (every sale asks).
_PROMOTIONS_IN_FORCE = DirectStatement(
    select(MdPromotion.body).where(
        or_(MdPromotion.ends_at.is_(None), MdPromotion.ends_at > bindparam("at"))
    )
)


async def _category_paths(session: AsyncSession, skus: list[str]) -> dict[str, str | None]:
    reader = read_connection(session.get_bind())
    if reader is not None:
        marks = ", ".join("?" * len(skus))
        sql = f"SELECT sku, category_path FROM md_products WHERE sku IN ({marks})"
        return {sku: path for sku, path in reader.fetch(sql, skus)}
    query = select(MdProduct.sku, MdProduct.category_path).where(MdProduct.sku.in_(skus))
    return {sku: path for sku, path in (await session.execute(query)).all()}


async def promotion_discounts(
    session: AsyncSession, lines: list[BasketLine], *, at: datetime
) -> list[LineDiscount]:
    """Discount per line from the promotions in force at ``at`` (one entry per line),
    evaluated by ``protocol.promotions`` with the rules central uses. Master data is
    read on the engine's plain reader when it has one (committed data, no hop)."""
    if not lines:
        return []
    reader = read_connection(session.get_bind())
    if reader is not None:
        statement = _PROMOTIONS_IN_FORCE
        found = reader.fetch(statement.sql, statement.parameters({"at": at}))
        bodies = [statement.row(row)[0] for row in found]
    else:
        bodies = list((await session.scalars(_PROMOTIONS_IN_FORCE.statement, {"at": at})).all())
    if not bodies:
        return [LineDiscount() for _ in lines]
    promotions: dict[str, PromotionRecord] = {}
    for body in bodies:
        try:
            record = decode_masterdata(body)
        except WireDecodeError as exc:
            # Stored before its limits were declared, and refused now: the sale goes on
            # without it (the applier would refuse it too).
            log.warning("a stored promotion does not decode and is left out: %s", exc)
            continue
        if isinstance(record, PromotionRecord):
            promotions[record.promotion_id] = record
    paths = await _category_paths(session, sorted({line.sku for line in lines}))
    promo_lines = [
        PromoLine(
            sku=line.sku,
            quantity_milli=line.quantity_milli,
            unit_price=line.unit_price,
            gross=line.gross,
            category_path=tuple(p for p in (paths.get(line.sku) or "").split("/") if p)
            or ((line.category,) if line.category else ()),
        )
        for line in lines
    ]
    results = evaluate_promotions(list(promotions.values()), promo_lines, at)
    return [LineDiscount(amount=r.amount, promotion_id=r.promotion_id) for r in results]
