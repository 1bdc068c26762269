"""Products, barcodes and categories: head office's catalog.

Every write validates everything first (a bad field changes nothing), then bumps
the master-data version and enqueues the down-stream keys it touched, in one
transaction with the change.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import msgspec
from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from central.api.schemas import Page
from central.errors import ConflictError, NotFoundError, ValidationFailed
from central.models import Category, PriceEntryRow, Product, ProductBarcode
from central.services.audit import record_change
from central.services.masterdata_publisher import (
    DownKey,
    allocate_versions,
    enqueue,
    product_targets,
)
from central.services.vat_groups import load_vat_groups, resolve_vat_group
from protocol.limits import MAX_SCALE_PLU, Code32, Text200
from protocol.masterdata import KIND_PRICE, bucket_key, bucket_of, validate_barcode

__all__ = [
    "UNITS",
    "BarcodeIn",
    "CategoryIn",
    "CategoryOut",
    "ProductIn",
    "ProductOut",
    "ProductPatch",
    "archive_product",
    "create_category",
    "create_product",
    "get_product",
    "list_categories",
    "list_products",
    "price_targets",
    "unit_of_work",
    "update_product",
    "validate_product_fields",
]

UNITS = ("pcs", "kg", "g", "l", "ml", "m", "m2", "pack")
SKU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$")
CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


@asynccontextmanager
async def unit_of_work(session: AsyncSession) -> AsyncIterator[None]:
    """A transaction, unless the caller already opened one (then the caller commits)."""
    if session.in_transaction():
        yield
        return
    async with session.begin():
        yield


class BarcodeIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: str
    # ean13 | ean8 | upca | internal; empty: detected from the code.
    kind: str | None = None


class ProductIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: str
    name: str
    unit: str = "pcs"
    weighed: bool = False
    scale_plu: int | None = None
    barcodes: list[BarcodeIn] = msgspec.field(default_factory=list)
    category: str | None = None
    vat_rate_bp: int
    # The fiscal printers' tax group (A..H); None: the chain's group of vat_rate_bp.
    vat_group: str | None = None


class ProductPatch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; absent fields stay as they are."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    unit: str | msgspec.UnsetType = msgspec.UNSET
    weighed: bool | msgspec.UnsetType = msgspec.UNSET
    scale_plu: int | msgspec.UnsetType | None = msgspec.UNSET
    barcodes: list[BarcodeIn] | msgspec.UnsetType = msgspec.UNSET
    category: str | msgspec.UnsetType | None = msgspec.UNSET
    vat_rate_bp: int | msgspec.UnsetType = msgspec.UNSET
    vat_group: str | msgspec.UnsetType = msgspec.UNSET


class ProductOut(msgspec.Struct, kw_only=True):
    sku: str
    name: str
    unit: str
    weighed: bool
    scale_plu: int | None
    barcodes: list[BarcodeIn]
    category: str | None
    vat_rate_bp: int
    vat_group: str
    active: bool
    version: int
    updated_at: datetime


class CategoryIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    code: Code32
    name: Text200
    parent: Code32 | None = None


class CategoryOut(msgspec.Struct, kw_only=True):
    code: str
    name: str
    parent: str | None


def validate_product_fields(
    *,
    sku: str,
    name: str,
    unit: str,
    weighed: bool,
    scale_plu: int | None,
    vat_rate_bp: int,
    barcodes: Sequence[BarcodeIn],
) -> list[tuple[str, str]]:
    """Field-level checks that need no database: (code, kind) of each barcode. The
    VAT group is checked against the chain's groups (``resolve_vat_group``)."""
    if not SKU_RE.fullmatch(sku):
        raise ValidationFailed(
            "SKU: 1-64 letters, digits, '_', '-', '.', '/', starting with a letter or digit",
            field="sku",
        )
    if not name.strip() or len(name) > 200:
        raise ValidationFailed("name must be 1-200 characters", field="name")
    if unit not in UNITS:
        raise ValidationFailed(f"unit must be one of {', '.join(UNITS)}", field="unit")
    if weighed and unit not in ("kg", "g", "l", "ml", "m"):
        raise ValidationFailed("a weighed product is sold by kg, g, l, ml or m", field="weighed")
    if scale_plu is not None and not 1 <= scale_plu <= MAX_SCALE_PLU:
        raise ValidationFailed(
            f"scale PLU must be 1..{MAX_SCALE_PLU} (five digits on the label barcode)",
            field="scale_plu",
        )
    if scale_plu is not None and not weighed:
        raise ValidationFailed("only weighed products have a scale PLU", field="scale_plu")
    if not 0 <= vat_rate_bp <= 10000:
        raise ValidationFailed("VAT rate is 0..10000 basis points", field="vat_rate_bp")
    codes: list[tuple[str, str]] = []
    for i, barcode in enumerate(barcodes):
        try:
            kind = validate_barcode(barcode.code, barcode.kind)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValidationFailed(str(exc), field=f"barcodes[{i}].code") from exc
        if any(code == barcode.code for code, _ in codes):
            raise ValidationFailed(
                f"barcode {barcode.code} given twice", field=f"barcodes[{i}].code"
            )
        codes.append((barcode.code, kind))
    return codes


async def _check_references(
    session: AsyncSession,
    sku: str,
    category: str | None,
    barcodes: list[tuple[str, str]],
    scale_plu: int | None,
) -> None:
    if category is not None and await session.get(Category, category) is None:
        raise ValidationFailed(f"unknown category {category!r}", field="category")
    if barcodes:
        taken = (
            await session.execute(
                select(ProductBarcode.barcode, ProductBarcode.sku).where(
                    ProductBarcode.barcode.in_([c for c, _ in barcodes]),
                    ProductBarcode.sku != sku,
                )
            )
        ).first()
        if taken is not None:
            index = [c for c, _ in barcodes].index(taken[0])
            raise ConflictError(
                f"barcode {taken[0]} belongs to product {taken[1]}",
                field=f"barcodes[{index}].code",
            )
    if scale_plu is not None:
        other = await session.scalar(
            select(Product.sku).where(
                Product.scale_plu == scale_plu, Product.sku != sku, Product.active
            )
        )
        if other is not None:
            raise ConflictError(f"scale PLU {scale_plu} belongs to {other}", field="scale_plu")


async def price_targets(session: AsyncSession, skus: Sequence[str]) -> set[DownKey]:
    keys: set[DownKey] = set()
    for start in range(0, len(skus), 2000):
        rows = await session.execute(
            select(PriceEntryRow.scope, PriceEntryRow.scope_id, PriceEntryRow.bucket)
            .where(PriceEntryRow.sku.in_(skus[start : start + 2000]))
            .distinct()
        )
        keys.update((KIND_PRICE, s, sid, bucket_key(b)) for s, sid, b in rows)
    return keys


async def _out(session: AsyncSession, product: Product) -> ProductOut:
    return (await _outs(session, [product]))[0]


async def _outs(session: AsyncSession, products: Sequence[Product]) -> list[ProductOut]:
    """The products as answered, their barcodes read in one query for all of them (a
    page of 1,000 was 1,000 queries)."""
    barcodes: dict[str, list[BarcodeIn]] = {p.sku: [] for p in products}
    skus = list(barcodes)
    for at in range(0, len(skus), 1000):  # bind parameters stay few
        rows = await session.execute(
            select(ProductBarcode.sku, ProductBarcode.barcode, ProductBarcode.kind)
            .where(ProductBarcode.sku.in_(skus[at : at + 1000]))
            .order_by(ProductBarcode.sku, ProductBarcode.barcode)
        )
        for sku, code, kind in rows:
            barcodes[sku].append(BarcodeIn(code=code, kind=kind))
    return [
        ProductOut(
            sku=product.sku,
            name=product.name,
            unit=product.unit,
            weighed=product.weighed,
            scale_plu=product.scale_plu,
            barcodes=barcodes[product.sku],
            category=product.category_code,
            vat_rate_bp=product.vat_rate_bp,
            vat_group=product.vat_group,
            active=product.active,
            version=product.version,
            updated_at=product.updated_at,
        )
        for product in products
    ]


async def _publish_product(session: AsyncSession, product: Product, *, prices: bool) -> None:
    version = await allocate_versions(session)
    product.version = version
    product.updated_at = datetime.now(UTC)
    await session.flush()
    keys = await product_targets(session, [product.sku])
    if prices:
        keys |= await price_targets(session, [product.sku])
    await enqueue(session, version, keys)


async def create_product(session: AsyncSession, data: ProductIn) -> ProductOut:
    async with unit_of_work(session):
        codes = validate_product_fields(
            sku=data.sku,
            name=data.name,
            unit=data.unit,
            weighed=data.weighed,
            scale_plu=data.scale_plu,
            vat_rate_bp=data.vat_rate_bp,
            barcodes=data.barcodes,
        )
        vat_group = resolve_vat_group(
            await load_vat_groups(session), data.vat_rate_bp, data.vat_group
        )
        if await session.get(Product, data.sku) is not None:
            raise ConflictError(f"product {data.sku} already exists", field="sku")
        await _check_references(session, data.sku, data.category, codes, data.scale_plu)
        product = Product(
            sku=data.sku,
            name=data.name.strip(),
            unit=data.unit,
            weighed=data.weighed,
            scale_plu=data.scale_plu,
            category_code=data.category,
            vat_rate_bp=data.vat_rate_bp,
            vat_group=vat_group,
            active=True,
            bucket=bucket_of(data.sku),
            version=0,
        )
        session.add(product)
        await session.flush()
        session.add_all(ProductBarcode(barcode=c, sku=data.sku, kind=k) for c, k in codes)
        await _publish_product(session, product, prices=False)
        out = await _out(session, product)
        await record_change(
            session, action="product.create", target=f"product:{data.sku}", after=out
        )
        return out


async def _get(session: AsyncSession, sku: str) -> Product:
    product = await session.get(Product, sku)
    if product is None:
        raise NotFoundError(f"no product {sku}", field="sku")
    return product


async def get_product(session: AsyncSession, sku: str) -> ProductOut:
    return await _out(session, await _get(session, sku))


async def update_product(session: AsyncSession, sku: str, patch: ProductPatch) -> ProductOut:
    async with unit_of_work(session):
        product = await _get(session, sku)
        current = await _out(session, product)

        def pick(value: object, old: object) -> object:
            return old if value is msgspec.UNSET else value

        name = str(pick(patch.name, product.name))
        unit = str(pick(patch.unit, product.unit))
        weighed = bool(pick(patch.weighed, product.weighed))
        scale_plu = pick(patch.scale_plu, product.scale_plu)
        category = pick(patch.category, product.category_code)
        vat_rate_bp = pick(patch.vat_rate_bp, product.vat_rate_bp)
        # A new rate without a group: the group of that rate (with the chain's groups set).
        group_in = patch.vat_group if patch.vat_group is not msgspec.UNSET else None
        if group_in is None and patch.vat_rate_bp is msgspec.UNSET:
            group_in = product.vat_group
        barcodes = current.barcodes if patch.barcodes is msgspec.UNSET else patch.barcodes
        assert scale_plu is None or isinstance(scale_plu, int)
        assert category is None or isinstance(category, str)
        assert isinstance(vat_rate_bp, int)
        codes = validate_product_fields(
            sku=sku,
            name=name,
            unit=unit,
            weighed=weighed,
            scale_plu=scale_plu,
            vat_rate_bp=vat_rate_bp,
            barcodes=barcodes,
        )
        groups = await load_vat_groups(session)
        if not groups and group_in is None:
            group_in = product.vat_group  # nothing to derive it from: kept, as before
        vat_group = resolve_vat_group(groups, vat_rate_bp, group_in)
        await _check_references(session, sku, category, codes, scale_plu)
        if category != product.category_code:
            from central.services.promotions import check_category_change  # imports this

            await check_category_change(session, sku, category)
        product.name = name.strip()
        product.unit = unit
        product.weighed = weighed
        product.scale_plu = scale_plu
        product.category_code = category
        product.vat_rate_bp = vat_rate_bp
        product.vat_group = vat_group
        if patch.barcodes is not msgspec.UNSET:
            await session.execute(delete(ProductBarcode).where(ProductBarcode.sku == sku))
            session.add_all(ProductBarcode(barcode=c, sku=sku, kind=k) for c, k in codes)
        await _publish_product(session, product, prices=False)
        out = await _out(session, product)
        await record_change(
            session, action="product.update", target=f"product:{sku}", before=current, after=out
        )
        return out


async def archive_product(session: AsyncSession, sku: str) -> ProductOut:
    """No longer sold anywhere: it leaves every branch's catalog and price list."""
    async with unit_of_work(session):
        product = await _get(session, sku)
        before = await _out(session, product)
        if product.active:
            product.active = False
            await _publish_product(session, product, prices=True)
        out = await _out(session, product)
        # Recorded even when it was archived already: the request is on file either way.
        await record_change(
            session, action="product.archive", target=f"product:{sku}", before=before, after=out
        )
        return out


async def list_products(
    session: AsyncSession,
    *,
    q: str | None = None,
    sku: str | None = None,
    barcode: str | None = None,
    category: str | None = None,
    active: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[ProductOut]:
    query = select(Product)
    if q:
        # The user's text is matched literally: its own % and _ are not wildcards.
        escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where(
            or_(
                func.lower(Product.name).like(pattern, escape="\\"),
                func.lower(Product.sku).like(pattern, escape="\\"),
                Product.sku.in_(select(ProductBarcode.sku).where(ProductBarcode.barcode == q)),
            )
        )
    if sku:
        query = query.where(Product.sku == sku)
    if barcode:
        query = query.where(
            Product.sku.in_(select(ProductBarcode.sku).where(ProductBarcode.barcode == barcode))
        )
    if category:
        query = query.where(Product.category_code == category)
    if active is not None:
        query = query.where(Product.active.is_(active))
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    products = (
        await session.scalars(query.order_by(Product.sku).limit(limit).offset(offset))
    ).all()
    # The page every list answers (total_exact included: the catalog is counted whole).
    return Page(
        items=await _outs(session, products),
        total=int(total or 0),
        limit=limit,
        offset=offset,
    )


async def create_category(session: AsyncSession, data: CategoryIn) -> CategoryOut:
    async with unit_of_work(session):
        if not CODE_RE.fullmatch(data.code):
            raise ValidationFailed("category code: 1-32 letters, digits, '-' or '_'", field="code")
        if not data.name.strip():
            raise ValidationFailed("name must not be empty", field="name")
        if await session.get(Category, data.code) is not None:
            raise ConflictError(f"category {data.code} already exists", field="code")
        if data.parent is not None and await session.get(Category, data.parent) is None:
            raise ValidationFailed(f"unknown parent category {data.parent!r}", field="parent")
        session.add(Category(code=data.code, name=data.name.strip(), parent_code=data.parent))
        await session.flush()
        out = CategoryOut(code=data.code, name=data.name.strip(), parent=data.parent)
        await record_change(
            session, action="category.create", target=f"category:{data.code}", after=out
        )
        return out


async def list_categories(session: AsyncSession) -> list[CategoryOut]:
    rows = await session.scalars(select(Category).order_by(Category.code))
    return [CategoryOut(code=c.code, name=c.name, parent=c.parent_code) for c in rows]
