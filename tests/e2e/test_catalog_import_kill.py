"""SIGKILL of ``python -m central import products`` half-way through applying a file of
only some columns (sku, name, VAT rate): nothing of it is applied; the re-run renames every
product once and keeps every barcode, and the branch's tills still find each product
by its barcode, with its new name (nothing lost, nothing doubled)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from central.embedded_nats import EmbeddedNats
from central.models import Product, ProductBarcode
from central.services.assortment import (
    AssortmentChange,
    FormatIn,
    change_format_products,
    create_format,
)
from central.services.catalog_import import import_products
from central.services.masterdata_publisher import current_version
from central.services.pricing import set_prices_bulk
from tests.conftest import central_cli, register_branch, wait_until
from tests.e2e.test_demo_seed import till_lookup

N = 15000  # three apply chunks of 5,000: the kill lands after the first
SKUS = [f"K{i:05d}" for i in range(N)]
SAMPLES = (0, 7, N // 2, N - 1)


async def _till_name(agent: Any, code: str) -> str | None:
    found = await till_lookup(agent, code)
    return str(found["name"]) if found is not None else None


async def _kill_while_applying(db_url: str, tmp_path: Path, csv_path: Path) -> int:
    """Start the import, SIGKILL it once it reports its first applied chunk (inside the
    one transaction, before the commit); its exit status."""
    env = {
        **os.environ,
        "BACKROOM_DATABASE_URL": db_url,
        "BACKROOM_DATA_DIR": str(tmp_path / "central"),
        "BACKROOM_NATS_URL": "nats://127.0.0.1:1",
        "BACKROOM_CENTRAL_CONFIG": "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "central",
        "import",
        "products",
        str(csv_path),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    try:
        while b"applied:" not in seen:
            chunk = await asyncio.wait_for(proc.stderr.read(256), 60)
            assert chunk, seen.decode(errors="replace")
            seen += chunk
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        returncode = await proc.wait()
    return returncode


async def test_sigkill_during_a_partial_products_import_loses_and_doubles_nothing(
    central: Any, db_url: str, tmp_path: Path, nats_server: EmbeddedNats, make_agent: Any
) -> None:
    async with central.sessionmaker() as s:
        await create_format(s, FormatIn(code="mini", name="Minimarket"))
        await s.commit()
    await register_branch(central, "B1", format_code="mini")
    full = "sku,name,barcodes,vat_rate_bp,vat_group\n" + "".join(
        f"{sku},Product {sku},INT-{sku},2000,B\n" for sku in SKUS
    )
    async with central.sessionmaker() as s:
        assert (await import_products(s, io.StringIO(full), dry_run=False)).applied
    async with central.sessionmaker() as s:
        await change_format_products(s, "mini", AssortmentChange(add=SKUS))
        await set_prices_bulk(s, [(sku, 100) for sku in SKUS])
        await s.commit()
    agent = await make_agent("B1", nats_server.url, demo_catalog=False)

    async def till_names_are(prefix: str) -> bool:
        names = [await _till_name(agent, f"INT-{SKUS[i]}") for i in SAMPLES]
        return names == [f"{prefix} {SKUS[i]}" for i in SAMPLES]

    await wait_until(lambda: till_names_are("Product"), timeout=60)
    async with central.sessionmaker() as s:
        version_before = await current_version(s)

    # The ERP's file: names and VAT rates only (the buyer's repro).
    partial = tmp_path / "partial.csv"
    partial.write_text(
        "sku,name,vat_rate_bp\n" + "".join(f"{sku},Renamed {sku},2000\n" for sku in SKUS)
    )
    assert await _kill_while_applying(db_url, tmp_path, partial) == -signal.SIGKILL

    async def counts() -> tuple[int, int, int, int]:
        async with central.sessionmaker() as s:
            return (
                int(await s.scalar(select(func.count()).select_from(Product)) or 0),
                int(
                    await s.scalar(select(func.count()).where(Product.name.like("Renamed %"))) or 0
                ),
                int(await s.scalar(select(func.count()).select_from(ProductBarcode)) or 0),
                await current_version(s),
            )

    # Killed inside the transaction: nothing of the file, not even a version.
    assert await counts() == (N, 0, N, version_before)
    report = await asyncio.to_thread(
        central_cli, db_url, tmp_path, "import", "products", str(partial)
    )
    assert report["applied"] is True
    assert report["changed"] == {"name": N}
    product_count, renamed, barcodes, _ = await counts()
    assert (product_count, renamed, barcodes) == (N, N, N)
    async with central.sessionmaker() as s:
        weighed_or_regrouped = await s.scalar(
            select(func.count()).where((Product.vat_group != "B") | Product.weighed)
        )
    assert weighed_or_regrouped == 0
    await wait_until(lambda: till_names_are("Renamed"), timeout=60)
