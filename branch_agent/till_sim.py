"""A till simulator: a cashier's day through the till API (demo, tests and benchmarks).

Like a real till it scans every item first (product lookup, so it knows the price
and the promotion), weighs loose goods on the scale or scans the label scale's
weight-embedded code, shows the total, takes card or cash (rounded up to a note,
the agent computes the change), and posts the sale with the total it displayed. A
sale it did not hear back about is posted again with the same sale id (the agent
answers with the original). Now and then a customer brings something back, and
every ``shift_sales`` sales the shift is closed with a Z report and a new one opened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from devices.scanner import ean_check_digit
from protocol.units import line_amount, parse_milli

__all__ = [
    "DEMO_ITEMS",
    "SimItem",
    "TillRefused",
    "TillSimulator",
    "embedded_barcode",
    "random_basket",
]

log = logging.getLogger(__name__)


class TillRefused(Exception):
    """The agent refuses the till's token (401, 403): no sale could ever be posted."""


def _refused(response: httpx.Response) -> None:
    # Else every lookup's 401 read as "not sold here": a simulator posting nothing,
    # for ever, without a word.
    if response.status_code in (401, 403):
        try:
            detail = response.json().get("detail", "")
        except ValueError:
            detail = response.text
        raise TillRefused(
            f"the agent at {response.request.url.scheme}://{response.request.url.netloc.decode()}"
            f" refuses this till's token: {response.status_code} {detail} (--token: the"
            " till's token from the agent's [[agent.tills]] block)"
        )


@dataclass(frozen=True, slots=True)
class SimItem:
    """What the till's scanner can read for one product."""

    barcode: str
    weighed: bool = False
    # Label-scale PLU (weighed goods): the till prints 2 0 PPPPP WWWWW C codes.
    scale_plu: int | None = None


DEMO_ITEMS: tuple[SimItem, ...] = (
    SimItem("4006381333931"),
    SimItem("4001686301265"),
    SimItem("2000101000006", weighed=True, scale_plu=101),
    SimItem("8711000530085"),
    SimItem("5449000000996"),
    SimItem("2000202000004", weighed=True, scale_plu=202),
)


def embedded_barcode(plu: int, grams: int) -> str:
    body = f"20{plu:05d}{grams:05d}"
    return body + str(ean_check_digit(body))


def random_basket(
    rng: random.Random, items: tuple[SimItem, ...] = DEMO_ITEMS
) -> list[dict[str, Any]]:
    """Lines of a basket without the scale (weighed goods by weight-embedded code)."""
    lines: list[dict[str, Any]] = []
    for item in rng.sample(items, rng.randint(1, min(len(items), 6))):
        if item.weighed and item.scale_plu is not None:
            lines.append({"barcode": embedded_barcode(item.scale_plu, rng.randint(150, 2500))})
        elif item.weighed:
            lines.append(
                {"barcode": item.barcode, "quantity": f"{rng.randint(150, 2500) / 1000:.3f}"}
            )
        else:
            lines.append({"barcode": item.barcode, "quantity": str(rng.randint(1, 4))})
    return lines


@dataclass(slots=True)
class TillLog:
    """What the till was told: the basis of "nothing lost, nothing doubled" checks."""

    sales: dict[str, dict[str, Any]] = field(default_factory=dict)
    returns: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: int = 0
    unreachable: int = 0


def _no_open_shift(response: httpx.Response) -> bool:
    """The agent's 409 for a sale at a till with no shift open (not one being closed:
    that close must finish first)."""
    if response.status_code != 409:
        return False
    problem = response.json()
    return bool(
        isinstance(problem, dict)
        and str(problem.get("detail", "")).startswith("no open shift")
        and [e.get("field") for e in problem.get("errors") or ()] == ["shift_id"]
    )


class TillSimulator:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        seed: int | None = None,
        items: tuple[SimItem, ...] = DEMO_ITEMS,
        use_scale: bool = False,
        return_rate: float = 0.05,
        shift_sales: int = 200,
        cashiers: tuple[str, ...] = ("anna", "ben", "chris"),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rng = random.Random(seed)
        self.items = items
        self.use_scale = use_scale
        self.return_rate = return_rate
        self.shift_sales = shift_sales
        self.cashiers = cashiers
        self.log = TillLog()
        self._in_shift = 0
        self._said_nothing_sold = False

    @property
    def posted(self) -> int:
        return len(self.log.sales)

    @property
    def failed(self) -> int:
        return self.log.refused + self.log.unreachable

    async def _weigh(self, client: httpx.AsyncClient, item: SimItem) -> dict[str, Any]:
        if self.use_scale:
            response = await client.get(
                f"{self.base_url}/api/v1/devices/scale/weight", headers=self.headers
            )
            if response.status_code == 200:
                return {"barcode": item.barcode, "quantity": response.json()["quantity"]}
        if item.scale_plu is not None:
            return {"barcode": embedded_barcode(item.scale_plu, self.rng.randint(150, 2500))}
        return {"barcode": item.barcode, "quantity": f"{self.rng.randint(150, 2500) / 1000:.3f}"}

    async def _basket(self, client: httpx.AsyncClient) -> tuple[list[dict[str, Any]], int]:
        """Scan a basket like a till does; returns the lines and the total it shows."""
        lines: list[dict[str, Any]] = []
        total = 0
        for item in self.rng.sample(self.items, self.rng.randint(1, min(len(self.items), 8))):
            if item.weighed:
                line = await self._weigh(client, item)
            else:
                line = {"barcode": item.barcode, "quantity": str(self.rng.choice((1, 1, 1, 2, 3)))}
            found = await client.get(
                f"{self.base_url}/api/v1/products/by-barcode/{line['barcode']}",
                headers=self.headers,
            )
            _refused(found)
            if found.status_code != 200:
                continue  # not sold here: the cashier puts it aside
            product = found.json()
            quantity_milli = parse_milli(product["quantity"] or line.get("quantity", "1"))
            gross = line_amount(product["price"], quantity_milli)
            # The promotion shown at lookup is per single item; the agent computes the
            # basket's; the till sends no expected total when a promotion is involved.
            total += gross if not product["promotion_discount"] else 10**12
            lines.append(line)
        return lines, total

    def _payments(self, total: int) -> list[dict[str, Any]]:
        if self.rng.random() < 0.45:
            kind = self.rng.choice(("credit_card", "debit_card"))
            return [{"type": kind, "amount": total}]
        note = self.rng.choice((500, 1000, 2000, 5000))
        return [{"type": "cash", "amount": -(-total // note) * note}]

    async def _post(
        self, client: httpx.AsyncClient, path: str, body: dict[str, Any], attempts: int = 20
    ) -> httpx.Response | None:
        """POST, and post the same body again (same id) when the agent did not answer."""
        for attempt in range(attempts):
            try:
                return await client.post(f"{self.base_url}{path}", json=body, headers=self.headers)
            except httpx.HTTPError as exc:
                self.log.unreachable += 1
                log.debug("till could not reach the agent (%s), retrying", exc)
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
        return None

    async def open_shift(self, client: httpx.AsyncClient) -> None:
        response = await self._post(
            client,
            "/api/v1/shifts",
            {"cashier": self.rng.choice(self.cashiers), "opening_float": 10000},
        )
        if response is not None:
            _refused(response)
        self._in_shift = 0

    async def close_shift(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        response = await self._post(client, "/api/v1/shifts/current/close", {})
        if response is not None and response.status_code == 200:
            result: dict[str, Any] = response.json()
            return result
        return None

    async def post_sale(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        lines, total = await self._basket(client)
        if not lines:
            if not self._said_nothing_sold:
                self._said_nothing_sold = True
                log.warning(
                    "none of the scanned products is sold at this agent (its catalog has"
                    " none of the demo barcodes yet): no sale posted; the simulator sells"
                    " the demo catalog (central: seed-demo --branch CODE)"
                )
            return None
        self._said_nothing_sold = False
        body: dict[str, Any] = {
            "sale_id": str(uuid.uuid4()),
            "cashier": self.rng.choice(self.cashiers),
            "lines": lines,
        }
        if total < 10**12:
            body["expected_total"] = total
            body["payments"] = self._payments(total)
        else:
            body["payments"] = [{"type": "cash", "amount": 100000}]
        response = await self._post(client, "/api/v1/sales", body)
        if response is not None and _no_open_shift(response):
            # Someone closed the shift at this till (the manager's Z, a walkthrough's
            # close): open the next one, as a cashier would, and sell on.
            await self.open_shift(client)
            response = await self._post(client, "/api/v1/sales", body)
        if response is None:
            return None
        if response.status_code in (200, 201):
            result: dict[str, Any] = response.json()
            self.log.sales[result["sale_id"]] = result
            self._in_shift += 1
            return result
        self.log.refused += 1
        log.warning("sale refused: %s %s", response.status_code, response.text)
        return None

    async def post_return(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        done = [s for s in self.log.sales.values() if s["status"] in ("fiscalized", "recorded")]
        if not done:
            return None
        original = self.rng.choice(done)
        line = self.rng.choice(original["lines"])
        # One piece back, or the whole weighed item.
        quantity = "1" if line["quantity"].endswith(".000") else line["quantity"]
        body = {
            "return_id": str(uuid.uuid4()),
            "original_sale_id": original["sale_id"],
            "original_till": original["till"],
            "lines": [{"line_no": line["line_no"], "quantity": quantity}],
            "reason": self.rng.choice(("damaged", "changed mind", "wrong item")),
        }
        response = await self._post(client, "/api/v1/returns", body)
        if response is not None and response.status_code in (200, 201):
            result: dict[str, Any] = response.json()
            self.log.returns[result["return_id"]] = result
            return result
        return None  # e.g. that line was already returned: the till just moves on

    async def step(self, client: httpx.AsyncClient) -> None:
        if self._in_shift >= self.shift_sales:
            await self.close_shift(client)
            await self.open_shift(client)
        if self.rng.random() < self.return_rate:
            await self.post_return(client)
        else:
            await self.post_sale(client)

    async def run(
        self, interval_s: float, stop: asyncio.Event, *, count: int | None = None
    ) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await self.open_shift(client)
            done = 0
            while not stop.is_set() and (count is None or done < count):
                try:
                    await self.step(client)
                except httpx.HTTPError as exc:
                    self.log.unreachable += 1
                    log.warning("till could not reach the agent: %s", exc)
                done += 1
                if interval_s > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), interval_s)
                    except TimeoutError:
                        pass
