"""A products CSV with only some columns (or empty cells) changes only what it gives:
a column absent from the header, or an empty cell, leaves the field as it is for an
existing product; ``-`` clears barcodes, category or scale PLU explicitly; the dry run
says per field how many products change and warns about fields it would clear."""

from __future__ import annotations

import io

from sqlalchemy import select

from central.db import create_engine, create_sessionmaker
from central.models import Product, ProductBarcode
from central.services.catalog import CategoryIn, create_category
from central.services.catalog_import import ImportReport, import_products

FULL = """sku,name,unit,weighed,scale_plu,barcodes,category,vat_rate_bp,vat_group,active
CREME,Creme brulee 2kg,kg,true,20,2000020000002|INT-20,dessert,1000,B,true
MILK,Milk 1L,pcs,false,,4006381333931,dairy,1000,B,true
"""


async def _state(sm: object, sku: str) -> tuple[object, ...]:
    async with sm() as s:  # type: ignore[operator]
        p = await s.get(Product, sku)
        codes = sorted(
            (await s.scalars(select(ProductBarcode.barcode).where(ProductBarcode.sku == sku))).all()
        )
        return (
            p.name,
            p.unit,
            p.weighed,
            p.scale_plu,
            p.category_code,
            p.vat_rate_bp,
            p.vat_group,
            p.active,
            codes,
        )


async def _import(sm: object, text: str, *, dry_run: bool) -> ImportReport:
    async with sm() as s:  # type: ignore[operator]
        return await import_products(s, io.StringIO(text), dry_run=dry_run)


async def _seed(sm: object) -> None:
    async with sm() as s:  # type: ignore[operator]
        await create_category(s, CategoryIn(code="dessert", name="Desserts"))
        await create_category(s, CategoryIn(code="dairy", name="Dairy"))
        await s.commit()
    assert (await _import(sm, FULL, dry_run=False)).applied


async def test_absent_columns_and_empty_cells_leave_fields_as_they_are(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        await _seed(sm)
        creme = (
            "Creme brulee 2kg",
            "kg",
            True,
            20,
            "dessert",
            1000,
            "B",
            True,
            ["2000020000002", "INT-20"],
        )
        assert await _state(sm, "CREME") == creme
        # The buyer's repro: only sku, name and VAT rate; a new product gets defaults.
        partial = "sku,name,vat_rate_bp\nCREME,Creme brulee 2 kg,2000\nNEW,New thing,700\n"
        dry = await _import(sm, partial, dry_run=True)
        assert dry.error_count == 0, dry.errors
        assert (dry.created, dry.updated) == (1, 1)
        assert dry.changed == {"name": 1, "vat_rate_bp": 1}
        assert dry.cleared == {}
        assert (await _import(sm, partial, dry_run=False)).applied
        assert await _state(sm, "CREME") == ("Creme brulee 2 kg", *creme[1:5], 2000, *creme[6:])
        assert await _state(sm, "NEW") == (
            "New thing",
            "pcs",
            False,
            None,
            None,
            700,
            "A",
            True,
            [],
        )
        # An ERP export with the columns present but empty cells: nothing wiped either.
        empty = (
            "sku,name,unit,weighed,scale_plu,barcodes,category,vat_rate_bp,vat_group,active\n"
            "CREME,,,,,,,,,\n"
        )
        dry = await _import(sm, empty, dry_run=True)
        assert dry.error_count == 0, dry.errors
        assert dry.changed == {}
        assert dry.warnings == []
        assert (await _import(sm, empty, dry_run=False)).applied
        assert await _state(sm, "CREME") == ("Creme brulee 2 kg", *creme[1:5], 2000, *creme[6:])
        # "-" clears explicitly; the dry run counts and warns before anything is lost.
        clear = "sku,barcodes,category\nCREME,-,-\nMILK,-,\n"
        dry = await _import(sm, clear, dry_run=True)
        assert dry.error_count == 0, dry.errors
        assert dry.cleared == {"barcodes": 2, "category": 1}
        assert dry.changed == {"barcodes": 2, "category": 1}
        assert any("barcodes" in w and "2" in w for w in dry.warnings), dry.warnings
        assert await _state(sm, "CREME") == ("Creme brulee 2 kg", *creme[1:5], 2000, *creme[6:])
        assert (await _import(sm, clear, dry_run=False)).applied
        assert await _state(sm, "CREME") == (
            "Creme brulee 2 kg",
            "kg",
            True,
            20,
            None,
            2000,
            "B",
            True,
            [],
        )
        milk = await _state(sm, "MILK")
        assert milk[4] == "dairy"
        assert milk[8] == []
    finally:
        await engine.dispose()


async def test_partial_files_are_refused_with_the_field_at_fault(db_url: str) -> None:
    engine = create_engine(db_url)
    sm = create_sessionmaker(engine)
    try:
        await _seed(sm)
        bad = (
            "sku,name,weighed,vat_rate_bp,vat_group\n"
            "NEW1,,,1000,\n"  # a new product needs its name
            "NEW2,Thing,,,\n"  # and its VAT rate
            "CREME,-,,,\n"  # '-' clears only barcodes, category, scale_plu
            "CREME2,Other,,1000,-\n"
            "CREME,,false,,\n"  # not weighed but keeps its scale PLU: clear it with '-'
        )
        report = await _import(sm, bad, dry_run=False)
        assert [(e.line, e.field) for e in report.errors] == [
            (2, "name"),
            (3, "vat_rate_bp"),
            (4, "name"),
            (5, "vat_group"),
            (6, "scale_plu"),
        ], report.errors
        assert not report.applied
        assert (await _state(sm, "CREME"))[2:4] == (True, 20)
        async with sm() as s:
            assert await s.get(Product, "NEW1") is None
    finally:
        await engine.dispose()
