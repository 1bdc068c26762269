"""A scanned EAN-13, EAN-8 or UPC-A whose check digit is wrong is a misread: refused
with its own message ("check digit wrong: rescan"), never "unknown barcode", so the
cashier scans again instead of looking for a product the store does not have."""

from __future__ import annotations

from sqlalchemy import func, select

from branch_agent.models import ProductBarcode, Sale
from tests.branch_agent.conftest import TILL, Store, embedded_code
from tests.branch_agent.test_sales_and_fiscal import basket

GOOD = "4006381333931"  # MILK-1L in the demo catalog
# The same with a wrong check digit; EAN-8 and UPC-A codes with one; a label-scale code.
MISREAD = ("4006381333932", "96385070", "036000291453", embedded_code(101, 754)[:-1] + "0")
UNKNOWN = "0000000000017"  # check digit right, no such product


async def test_a_wrong_check_digit_is_told_apart_from_an_unknown_barcode(store: Store) -> None:
    assert embedded_code(101, 754)[-1] != "0"
    for code in MISREAD:
        found = await store.client.get(f"/api/v1/products/by-barcode/{code}", headers=TILL)
        assert found.status_code == 422, (code, found.text)
        assert found.headers["content-type"].startswith("application/problem+json")
        assert found.json()["errors"][0]["field"] == "code"
        assert found.json()["detail"] == f"barcode {code!r}: check digit wrong: rescan"
    unknown = await store.client.get(f"/api/v1/products/by-barcode/{UNKNOWN}", headers=TILL)
    assert unknown.status_code == 404, unknown.text
    assert "unknown barcode" in unknown.json()["detail"]
    assert "check digit" not in unknown.json()["detail"]
    assert (await store.client.get(f"/api/v1/products/by-barcode/{GOOD}", headers=TILL)).json()[
        "sku"
    ] == "MILK-1L"


async def test_a_sale_line_with_a_wrong_check_digit_says_rescan_and_records_nothing(
    store: Store,
) -> None:
    await store.open_shift()
    misread = await store.sale(basket("cd-1") | {"lines": [{"barcode": MISREAD[0]}]})
    assert misread.status_code == 422, misread.text
    assert misread.json()["errors"][0]["field"] == "lines[0].barcode"
    assert misread.json()["detail"] == f"barcode {MISREAD[0]!r}: check digit wrong: rescan"
    unknown = await store.sale(basket("cd-2") | {"lines": [{"barcode": UNKNOWN}]})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["detail"] == f"unknown barcode {UNKNOWN!r}"
    async with store.agent.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Sale)) == 0
    assert store.fiscal.sim.receipts == []


async def test_a_numeric_internal_code_the_catalog_lists_is_sold_as_listed(store: Store) -> None:
    # Head office may declare an 8/12/13-digit code internal (not check-digit tested):
    # listed in the catalog, it is the product, whatever its last digit.
    async with store.agent.sessionmaker() as session, session.begin():
        session.add(ProductBarcode(barcode="12345678", sku="MILK-1L"))
    found = await store.client.get("/api/v1/products/by-barcode/12345678", headers=TILL)
    assert found.status_code == 200, found.text
    assert found.json()["sku"] == "MILK-1L"
