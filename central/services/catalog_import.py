"""CSV import and export of products and prices (how chains feed catalogs from an ERP).

An import first validates every row (the dry run reports each bad row with its
line number, field and reason) and applies nothing unless the whole file is
good; the apply then writes in chunks with bulk upserts inside one transaction,
so a file is taken entirely or not at all.

Products CSV (header required, column order free)::

    sku,name,unit,weighed,scale_plu,barcodes,category,vat_rate_bp,vat_group,active
    MILK-1L,Milk 1L,pcs,false,,4006381333931|INT-7,dairy,1000,B,true

``barcodes`` are separated by ``|``; ``active`` false archives the product. Only
``sku`` is required: a column absent from the header, or an empty cell, leaves that
field of an existing product as it is (a new product gets the defaults, and needs
``name`` and ``vat_rate_bp``); ``-`` clears ``barcodes``, ``category`` or
``scale_plu``. The report counts per field the existing products changed and cleared. An empty
``vat_group`` of a new product, or of a row giving ``vat_rate_bp``, is the chain's
group of that rate; one carrying another rate is a bad row (``central.services.vat_groups``).

Prices CSV::

    sku,price,scope,scope_id,effective_at,effective_local
    MILK-1L,1.19,all,,,
    MILK-1L,1.09,zone,north,2026-12-01T05:00:00+00:00,

``price`` is decimal text in the currency unit (at most two decimals: ``2.59``, not
the API's ``259`` cents); a price more than 10x above or below the one in force at its
scope (else the chain's) refuses the file unless ``allow_large_changes``. A row's moment
(``effective_at`` with its UTC offset, or ``effective_local`` in the reached branches'
local time, not both) is checked as ``POST /api/v1/prices`` checks it, so the dry run
refuses every row the apply would (e.g. a local time already past in some branch).
The prices export writes the prices in force now in these columns (no moments), so
export, edit and import back works; with ``history`` every entry and its moment.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

import msgspec
from sqlalchemy import delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from central.errors import DomainError
from central.models import (
    Branch,
    Category,
    PriceEntryRow,
    PriceZone,
    Product,
    ProductBarcode,
    StoreFormat,
)
from central.services.audit import SUMMARY_KEYS, bulk_summary, record_change
from central.services.catalog import BarcodeIn, price_targets, unit_of_work, validate_product_fields
from central.services.masterdata_publisher import allocate_versions, enqueue, product_targets
from central.services.pricing import (
    check_price,
    effective_moment,
    entries_in_force,
    large_change_text,
    large_changes,
    set_prices_bulk,
)
from central.services.promotions import check_category_change, promoted_skus
from central.services.vat_groups import load_vat_groups, resolve_vat_group
from protocol.masterdata import bucket_of
from protocol.units import format_minor, parse_minor

__all__ = [
    "PRICE_COLUMNS",
    "PRODUCT_COLUMNS",
    "ImportReport",
    "RowError",
    "export_prices_csv",
    "export_products_csv",
    "import_prices",
    "import_products",
]

PRODUCT_COLUMNS = (
    "sku",
    "name",
    "unit",
    "weighed",
    "scale_plu",
    "barcodes",
    "category",
    "vat_rate_bp",
    "vat_group",
    "active",
)
PRICE_COLUMNS = ("sku", "price", "scope", "scope_id", "effective_at", "effective_local")
# The cell that clears a field (an empty cell leaves it as it is).
CLEAR = "-"
_CLEARABLE = ("scale_plu", "barcodes", "category")
# Product's columns the import reads back to keep what a file does not give.
_PRODUCT_FIELDS = (
    "sku",
    "name",
    "unit",
    "weighed",
    "scale_plu",
    "category_code",
    "vat_rate_bp",
    "vat_group",
    "active",
)
_CHUNK = 5000
MAX_REPORTED_ERRORS = 10000

Progress = Callable[[str, int, int], None]


class RowError(msgspec.Struct, frozen=True, kw_only=True):
    line: int
    field: str
    message: str


class ImportReport(msgspec.Struct, kw_only=True):
    kind: str
    dry_run: bool
    rows: int
    created: int = 0
    updated: int = 0
    archived: int = 0
    prices: int = 0
    applied: bool = False
    errors: list[RowError] = msgspec.field(default_factory=list)
    error_count: int = 0
    # Products import: per field, how many existing products the file changes, and
    # how many lose a value to a '-' cell (each also a line in ``warnings``).
    changed: dict[str, int] = msgspec.field(default_factory=dict)
    cleared: dict[str, int] = msgspec.field(default_factory=dict)
    warnings: list[str] = msgspec.field(default_factory=list)


def _read(
    text: Iterable[str], required: tuple[str, ...]
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """(header, rows): each row's physical line and its cells by column, stripped."""
    reader = csv.DictReader(text)
    header = list(reader.fieldnames or [])
    missing = [c for c in required if c not in header]
    if missing:
        raise DomainError(f"CSV header lacks column(s): {', '.join(missing)}", field="header")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for row in reader:
            # line_num is the physical line of the row's end (quoted newlines count).
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}

    return header, rows()


def _rows(text: Iterable[str], required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    return _read(text, required)[1]


def _bool(text: str, default: bool) -> bool:
    if text == "":
        return default
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def _add_error(report: ImportReport, line: int, field: str, message: str) -> None:
    report.error_count += 1
    if len(report.errors) < MAX_REPORTED_ERRORS:
        report.errors.append(RowError(line=line, field=field, message=message))


def _merge_product(
    row: dict[str, str], before: dict[str, object] | None, categories: set[str]
) -> tuple[dict[str, object], list[BarcodeIn] | None]:
    """A row's product: the cells it gives over what the product has (a new product:
    over the defaults), and its barcodes when the row gives them (None: unchanged)."""
    for column, cell in row.items():
        if cell == CLEAR and column in PRODUCT_COLUMNS and column not in _CLEARABLE:
            raise DomainError(
                f"'-' clears only {', '.join(_CLEARABLE)}; leave the cell empty to keep it",
                field=column,
            )
    item: dict[str, object] = (
        dict(before)
        if before is not None
        else {
            "name": "",
            "unit": "pcs",
            "weighed": False,
            "scale_plu": None,
            "category_code": None,
            "vat_rate_bp": None,
            "vat_group": "A",
            "active": True,
        }
    )
    item.pop("sku", None)
    given = {c: v for c, v in row.items() if v != ""}
    if "name" in given:
        item["name"] = given["name"]
    elif before is None:
        raise DomainError("a new product needs a name", field="name")
    if "unit" in given:
        item["unit"] = given["unit"]
    for column in ("weighed", "active"):
        if column in given:
            try:
                item[column] = _bool(given[column], False)
            except ValueError as exc:
                raise DomainError(str(exc), field=column) from exc
    if "scale_plu" in given:
        try:
            item["scale_plu"] = None if given["scale_plu"] == CLEAR else int(given["scale_plu"])
        except ValueError as exc:
            raise DomainError("scale_plu must be a whole number", field="scale_plu") from exc
    if "vat_rate_bp" in given:
        try:
            item["vat_rate_bp"] = int(given["vat_rate_bp"])
        except ValueError as exc:
            raise DomainError("vat_rate_bp must be a whole number", field="vat_rate_bp") from exc
    elif before is None:
        raise DomainError("a new product needs vat_rate_bp", field="vat_rate_bp")
    if "vat_group" in given:
        item["vat_group"] = given["vat_group"]
    if "category" in given:
        category = None if given["category"] == CLEAR else given["category"]
        if category is not None and category not in categories:
            raise DomainError(f"unknown category {category!r}", field="category")
        item["category_code"] = category
    codes: list[BarcodeIn] | None = None
    if "barcodes" in given:
        cell = given["barcodes"]
        codes = [] if cell == CLEAR else [BarcodeIn(code=c) for c in cell.split("|") if c]
    return item, codes


def _count_changes(
    before: dict[str, object],
    item: dict[str, object],
    codes_before: list[str],
    codes: list[BarcodeIn] | None,
    changed: dict[str, int],
    cleared: dict[str, int],
) -> None:
    for column in _PRODUCT_FIELDS[1:]:
        if item[column] != before[column]:
            field = "category" if column == "category_code" else column
            changed[field] += 1
            if item[column] is None:
                cleared[field] += 1
    if codes is not None and sorted(c.code for c in codes) != sorted(codes_before):
        changed["barcodes"] += 1
        if not codes:
            cleared["barcodes"] += 1


async def import_products(
    session: AsyncSession,
    text: Iterable[str],
    *,
    dry_run: bool,
    progress: Progress | None = None,
) -> ImportReport:
    report = ImportReport(kind="products", dry_run=dry_run, rows=0)
    categories = set((await session.scalars(select(Category.code))).all())
    # What each existing product has now: a column absent from the file, or an empty
    # cell, keeps it (an ERP export of a few columns must not wipe the rest).
    current: dict[str, dict[str, object]] = {
        row.sku: dict(row._mapping)
        for row in await session.execute(select(*(getattr(Product, c) for c in _PRODUCT_FIELDS)))
    }
    current_codes: dict[str, list[str]] = defaultdict(list)
    existing_codes: dict[str, str] = {}
    for code, code_sku in await session.execute(
        select(ProductBarcode.barcode, ProductBarcode.sku).order_by(ProductBarcode.barcode)
    ):
        existing_codes[code] = code_sku
        current_codes[code_sku].append(code)
    vat_groups = await load_vat_groups(session)
    parsed: list[dict[str, object]] = []
    barcodes_of: dict[str, list[tuple[str, str]]] = {}
    seen_sku: dict[str, int] = {}
    seen_code: dict[str, tuple[str, int]] = {}
    seen_plu: dict[int, tuple[str, int]] = {}
    changed: dict[str, int] = defaultdict(int)
    cleared: dict[str, int] = defaultdict(int)
    header, rows = _read(text, ("sku",))
    ignored = [c for c in header if c not in PRODUCT_COLUMNS]
    if ignored:
        report.warnings.append(f"column(s) not imported: {', '.join(ignored)}")
    for line, row in rows:
        report.rows += 1
        sku = row.get("sku", "")
        try:
            item, codes = _merge_product(row, current.get(sku), categories)
            # The chain's group of the rate when the row sets the rate (and the chain has
            # groups: else nothing tells the group) or makes the product without a
            # group; a group given is checked against its rate.
            group_given = row.get("vat_group") or None
            rate_set = bool(vat_groups) and bool(row.get("vat_rate_bp"))
            if group_given is not None or rate_set or sku not in current:
                item["vat_group"] = resolve_vat_group(
                    vat_groups,
                    int(item["vat_rate_bp"]),  # type: ignore[call-overload]
                    group_given,
                )
            validated = validate_product_fields(
                sku=sku,
                name=str(item["name"]),
                unit=str(item["unit"]),
                weighed=bool(item["weighed"]),
                scale_plu=item["scale_plu"],  # type: ignore[arg-type]
                vat_rate_bp=int(item["vat_rate_bp"]),  # type: ignore[call-overload]
                barcodes=codes or [],
            )
            plu = item["scale_plu"]
            active = bool(item["active"])
            if sku in seen_sku:
                raise DomainError(f"SKU repeated (first on line {seen_sku[sku]})", field="sku")
            for code, _ in validated:
                if code in seen_code:
                    raise DomainError(
                        f"barcode {code} also on line {seen_code[code][1]}", field="barcodes"
                    )
            if isinstance(plu, int) and active and plu in seen_plu:
                raise DomainError(f"scale PLU also on line {seen_plu[plu][1]}", field="scale_plu")
        except DomainError as exc:
            _add_error(report, line, (exc.field or "row").split("[")[0], exc.detail)
            continue
        seen_sku[sku] = line
        for code, _ in validated:
            seen_code[code] = (sku, line)
        if isinstance(plu, int) and active:
            seen_plu[plu] = (sku, line)
        if codes is not None:
            barcodes_of[sku] = validated
        before = current.get(sku)
        if before is not None:
            _count_changes(before, item, current_codes[sku], codes, changed, cleared)
        parsed.append(item | {"sku": sku, "bucket": bucket_of(sku), "_line": line})
        if progress and report.rows % 20000 == 0:
            progress("validated", report.rows, 0)
    report.changed = dict(sorted(changed.items()))
    report.cleared = dict(sorted(cleared.items()))
    for field, count in report.cleared.items():
        report.warnings.append(f"{field} cleared on {count} existing product(s) (a '-' cell)")
    # Barcodes and PLUs already owned by products that are not in this file.
    for code, (sku, line) in seen_code.items():
        owner = existing_codes.get(code)
        # An owner whose barcodes this file replaces gives it up.
        if owner is not None and owner != sku and owner not in barcodes_of:
            _add_error(report, line, "barcodes", f"barcode {code} belongs to product {owner}")
    plu_owners = {
        p["scale_plu"]: plu_sku
        for plu_sku, p in current.items()
        if p["scale_plu"] is not None and p["active"]
    }
    for plu, (sku, line) in seen_plu.items():
        owner = plu_owners.get(plu)
        if owner is not None and owner != sku and owner not in seen_sku:
            _add_error(report, line, "scale_plu", f"scale PLU {plu} belongs to {owner}")
    # A product with its own promotion moved into a promoted category: the overlap
    # PATCH /products refuses (promotions.check_category_change), for the few promoted.
    promoted = await promoted_skus(session)
    if promoted:
        moving = [p for p in parsed if p["sku"] in promoted]
        for item in moving:
            moved, new_category, at_line = item["sku"], item["category_code"], item["_line"]
            assert isinstance(moved, str)
            assert isinstance(at_line, int)
            assert new_category is None or isinstance(new_category, str)
            if new_category != current.get(moved, {}).get("category_code"):
                try:
                    await check_category_change(session, moved, new_category)
                except DomainError as exc:
                    _add_error(report, at_line, "category", exc.detail)
    report.errors.sort(key=lambda e: e.line)
    existing = set(current)
    report.created = sum(1 for p in parsed if p["sku"] not in existing)
    report.updated = len(parsed) - report.created
    report.archived = sum(1 for p in parsed if not p["active"])
    if dry_run or report.error_count:
        return report
    # End the validation's read transaction: the apply is its own unit of work.
    await session.commit()
    await _apply_products(session, parsed, barcodes_of, progress, existing)
    report.applied = True
    return report


async def _apply_products(
    session: AsyncSession,
    parsed: list[dict[str, object]],
    barcodes_of: dict[str, list[tuple[str, str]]],
    progress: Progress | None,
    existing: set[str],
) -> None:
    dialect = session.get_bind().dialect.name
    upsert_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    async with unit_of_work(session):
        last = await allocate_versions(session, max(len(parsed), 1))
        first = last - len(parsed) + 1
        now = datetime.now(UTC)
        skus = [str(p["sku"]) for p in parsed]
        for start in range(0, len(parsed), _CHUNK):
            chunk = parsed[start : start + _CHUNK]
            rows = [
                {k: v for k, v in p.items() if k != "_line"}
                | {"version": first + start + i, "updated_at": now, "created_at": now}
                for i, p in enumerate(chunk)
            ]
            stmt = upsert_insert(Product)
            stmt = stmt.on_conflict_do_update(
                index_elements=[Product.sku],
                set_={
                    c: getattr(stmt.excluded, c)
                    for c in (*_PRODUCT_FIELDS[1:], "version", "updated_at")
                },
            )
            await session.execute(stmt, rows)
            # Only the products whose barcodes the file gives (or clears) lose theirs.
            chunk_skus = [str(p["sku"]) for p in chunk if p["sku"] in barcodes_of]
            await session.execute(delete(ProductBarcode).where(ProductBarcode.sku.in_(chunk_skus)))
            codes = [
                {"barcode": code, "sku": sku, "kind": kind}
                for sku in chunk_skus
                for code, kind in barcodes_of[sku]
            ]
            if codes:
                # A barcode moving between two products of this file: free it first.
                await session.execute(
                    delete(ProductBarcode).where(
                        ProductBarcode.barcode.in_([c["barcode"] for c in codes])
                    )
                )
                await session.execute(insert(ProductBarcode), codes)
            if progress:
                progress("applied", min(start + _CHUNK, len(parsed)), len(parsed))
        keys = await product_targets(session, skus)
        archived = [str(p["sku"]) for p in parsed if not p["active"]]
        if archived:
            keys |= await price_targets(session, archived)
        await enqueue(session, last, sorted(keys))
        # Up to hundreds of thousands of rows: the audit line is a summary.
        await record_change(
            session,
            action="product.import",
            target="products:csv",
            before=bulk_summary(s for s in skus if s in existing),
            after={
                **bulk_summary(skus),
                "created": sum(1 for s in skus if s not in existing),
                "updated": sum(1 for s in skus if s in existing),
                "archived": bulk_summary(archived),
            },
        )


async def import_prices(
    session: AsyncSession,
    text: Iterable[str],
    *,
    dry_run: bool,
    progress: Progress | None = None,
    allow_large_changes: bool = False,
) -> ImportReport:
    report = ImportReport(kind="prices", dry_run=dry_run, rows=0)
    active = set((await session.scalars(select(Product.sku).where(Product.active))).all())
    scope_ids = {
        "format": set((await session.scalars(select(StoreFormat.code))).all()),
        "zone": set((await session.scalars(select(PriceZone.code))).all()),
        "branch": set((await session.scalars(select(Branch.code))).all()),
    }
    now = datetime.now(UTC)
    groups: dict[tuple[str, str, datetime | None, str | None], dict[str, int]] = defaultdict(dict)
    moments: dict[tuple[str, str, str, str], DomainError | datetime] = {}
    # Per group, its resolved moment and each row's line (for the large-change guard).
    resolved: dict[tuple[str, str, datetime | None, str | None], datetime] = {}
    lines: dict[tuple[str, str, datetime | None, str | None], dict[str, int]] = defaultdict(dict)
    for line, row in _rows(text, ("sku", "price")):
        report.rows += 1
        try:
            sku = row["sku"]
            if sku not in active:
                raise DomainError(f"unknown or archived product {sku!r}", field="sku")
            try:
                price = parse_minor(row["price"])
            except ValueError as exc:
                raise DomainError(str(exc), field="price") from exc
            check_price(price, "price")
            scope = row.get("scope") or "all"
            scope_id = row.get("scope_id") or ""
            if scope == "all":
                if scope_id:
                    raise DomainError("the chain scope takes no scope_id", field="scope_id")
            elif scope not in scope_ids:
                raise DomainError("scope is all, format, zone or branch", field="scope")
            elif scope_id not in scope_ids[scope]:
                raise DomainError(f"unknown {scope} {scope_id!r}", field="scope_id")
            moment: datetime | None = None
            local = row.get("effective_local") or None
            if row.get("effective_at"):
                try:
                    moment = datetime.fromisoformat(row["effective_at"])
                except ValueError as exc:
                    raise DomainError("not an ISO date-time", field="effective_at") from exc
            # The apply's own check (set_prices_bulk): zone, past in some reached
            # branch's local time, both given; once per scope and moment text.
            key = (scope, scope_id, row.get("effective_at", ""), local or "")
            if key not in moments:
                try:
                    moments[key] = (
                        await effective_moment(session, scope, scope_id, moment, local, now)
                    )[0]
                except DomainError as exc:
                    moments[key] = exc
            refused = moments[key]
            if isinstance(refused, DomainError):
                raise DomainError(refused.detail, field=refused.field)
            group_key = (scope, scope_id, moment, local)
            group = groups[group_key]
            if sku in group:
                raise DomainError("same product, scope and moment twice", field="sku")
            group[sku] = price
            resolved[group_key] = refused
            lines[group_key][sku] = line
        except DomainError as exc:
            _add_error(report, line, exc.field or "row", exc.detail)
    if not allow_large_changes:
        # Euros typed as cents (or the reverse): refused unless the operator says so.
        for group_key, prices in groups.items():
            scope, scope_id = group_key[0], group_key[1]
            for large in await large_changes(
                session,
                list(prices.items()),
                scope=scope,
                scope_id=scope_id,
                moment=resolved[group_key],
            ):
                _add_error(
                    report,
                    lines[group_key][large.sku],
                    "price",
                    f"{large_change_text(large)} ({scope}{' ' + scope_id if scope_id else ''});"
                    " import with --allow-large-changes if this is meant",
                )
        report.errors.sort(key=lambda e: e.line)
    report.prices = report.rows - report.error_count
    if dry_run or report.error_count:
        return report
    await session.commit()
    async with unit_of_work(session):
        done = 0
        for (scope, scope_id, moment, local), prices in groups.items():
            try:
                await set_prices_bulk(
                    session,
                    list(prices.items()),
                    scope=scope,
                    scope_id=scope_id or None,
                    effective_at=moment,
                    effective_local=local,
                )
            except DomainError as exc:
                # Local-time moments are checked per reached branch here.
                _add_error(report, 0, exc.field or "row", exc.detail)
                raise
            done += len(prices)
            if progress:
                progress("applied", done, report.prices)
        await record_change(
            session,
            action="price.import",
            target="prices:csv",
            after={
                **bulk_summary(sku for prices in groups.values() for sku in prices),
                "groups": [
                    {"scope": scope, "scope_id": scope_id, "prices": len(prices)}
                    for (scope, scope_id, _m, _l), prices in list(groups.items())[:SUMMARY_KEYS]
                ],
            },
        )
    report.applied = True
    return report


async def export_products_csv(session: AsyncSession) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PRODUCT_COLUMNS)
    codes: dict[str, list[str]] = defaultdict(list)
    for sku, code in await session.execute(
        select(ProductBarcode.sku, ProductBarcode.barcode).order_by(ProductBarcode.barcode)
    ):
        codes[sku].append(code)
    for p in await session.scalars(select(Product).order_by(Product.sku)):
        writer.writerow(
            [
                p.sku,
                p.name,
                p.unit,
                "true" if p.weighed else "false",
                p.scale_plu if p.scale_plu is not None else "",
                "|".join(codes.get(p.sku, [])),
                p.category_code or "",
                p.vat_rate_bp,
                p.vat_group,
                "true" if p.active else "false",
            ]
        )
    return out.getvalue()


async def export_prices_csv(session: AsyncSession, *, history: bool = False) -> str:
    """The prices in force now, one row per product and scope, without moments: a
    price list to edit and import back. ``history``: every entry not withdrawn (past,
    superseded and scheduled ones, with their moments), which the import refuses."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PRICE_COLUMNS)
    if not history:
        in_force = await entries_in_force(session, datetime.now(UTC))
        order = {scope: i for i, scope in enumerate(("all", "format", "zone", "branch"))}
        for sku, scope, scope_id in sorted(in_force, key=lambda k: (k[0], order[k[1]], k[2])):
            price = in_force[(sku, scope, scope_id)][2]
            writer.writerow([sku, format_minor(price), scope, scope_id, "", ""])
        return out.getvalue()
    rows = await session.scalars(
        select(PriceEntryRow)
        .where(PriceEntryRow.withdrawn.is_(False))
        .order_by(PriceEntryRow.sku, PriceEntryRow.effective_at, PriceEntryRow.version)
    )
    for r in rows:
        writer.writerow(
            [
                r.sku,
                format_minor(r.price),
                r.scope,
                r.scope_id,
                "" if r.effective_local else r.effective_at.isoformat(),
                r.effective_local or "",
            ]
        )
    return out.getvalue()
