"""Till load: tills posting sales to their agent and keeping their own books.

A till knows its prices (the demo catalog), sends the total it displayed, and pays
by cash, card or both. When it hears nothing back (timeout, connection refused,
a 5xx) it posts the SAME sale again with the same ``sale_id`` until it gets an
answer, as real tills do; that retry is exactly what must never double a sale.
Each till keeps the receipts the agent acknowledged: the proof that they must
exist at the agent and at central afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from branch_agent.demo_catalog import DEMO_PRODUCTS
from protocol.units import line_amount

__all__ = ["AckedSale", "Till", "TillStats"]


@dataclass(frozen=True, slots=True)
class AckedSale:
    sale_id: str
    receipt_number: int
    total: int
    change: int
    payments: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class TillStats:
    posted: int = 0
    acked: int = 0
    retries: int = 0
    repeats_checked: int = 0
    # Refused clearly (a problem response saying the agent cannot take it now).
    refused: int = 0
    # Answers that are wrong: a 4xx for a valid sale, a repeat with another receipt.
    wrong_answers: list[str] = field(default_factory=list)
    server_errors: int = 0
    unresolved: int = 0


# Statuses with which an agent refuses a sale it did not record (disk full, overloaded).
REFUSAL_STATUSES = frozenset({503, 507})


class Till:
    def __init__(
        self,
        *,
        branch: str,
        till_id: str,
        token: str,
        base_url: str,
        rng: random.Random,
        interval_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self.branch = branch
        self.till_id = till_id
        self.token = token
        self.base_url = base_url.rstrip("/")
        self.rng = rng
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.acked: dict[str, AckedSale] = {}
        # The body each acknowledged sale was posted with, to post it again unchanged.
        self._bodies: dict[str, dict[str, Any]] = {}
        self.refused: dict[str, str] = {}
        # Sales posted without an answer when the run ended: they may or may not exist.
        self.unresolved: set[str] = set()
        self.stats = TillStats()

    # --- what a till sells ------------------------------------------------------------

    def new_sale(self) -> dict[str, Any]:
        rng = self.rng
        lines: list[dict[str, Any]] = []
        total = 0
        for product in rng.sample(DEMO_PRODUCTS, rng.randint(1, 4)):
            if product.weighed:
                quantity_milli = rng.randint(150, 2500)
                lines.append({"sku": product.sku, "quantity": f"{quantity_milli / 1000:.3f}"})
            else:
                quantity_milli = rng.randint(1, 4) * 1000
                lines.append({"barcode": product.barcode, "quantity": str(quantity_milli // 1000)})
            total += line_amount(product.price, quantity_milli)
        way = rng.random()
        if way < 0.45:
            # Cash, rounded up to the next 5.00: the agent gives the change.
            payments = [{"type": "cash", "amount": (total // 500 + 1) * 500}]
        elif way < 0.85:
            payments = [{"type": rng.choice(["credit_card", "debit_card"]), "amount": total}]
        else:
            card = rng.randint(1, total) if total > 1 else total
            payments = [{"type": "debit_card", "amount": card}]
            if total - card:
                payments.append({"type": "cash", "amount": total - card})
        return {
            "sale_id": str(uuid.uuid4()),
            "shift_id": f"{self.branch}-{self.till_id}",
            "cashier": rng.choice(["anna", "ben", "chris"]),
            "lines": lines,
            "payments": payments,
            "expected_total": total,
        }

    # --- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, hard_stop: asyncio.Event) -> None:
        """Sell until ``stop``; settle the sale in hand until ``hard_stop``."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self.timeout_s
        ) as client:
            await self._open_shift(client, stop)
            while not stop.is_set():
                if self.acked and self.rng.random() < 0.03:
                    await self._check_repeat(client)
                else:
                    await self._settle(client, self.new_sale(), hard_stop)
                pause = self.rng.uniform(0.5, 1.5) * self.interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    async def _open_shift(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        """Open the shift the sales name (the agent takes sales only into the till's
        open shift); again until the agent answers (it may be starting or killed)."""
        body = {"shift_id": f"{self.branch}-{self.till_id}", "cashier": "anna"}
        while not stop.is_set():
            try:
                response = await client.post("/api/v1/shifts", json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in (200, 201):
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _settle(
        self, client: httpx.AsyncClient, body: dict[str, Any], hard_stop: asyncio.Event
    ) -> None:
        sale_id = body["sale_id"]
        backoff = 0.1
        first = True
        while not hard_stop.is_set():
            if not first:
                self.stats.retries += 1
            first = False
            self.stats.posted += 1
            try:
                response = await client.post("/api/v1/sales", json=body)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in (200, 201):
                self._record(response.json())
                self._bodies[sale_id] = body
                return
            if response is not None and response.status_code in REFUSAL_STATUSES:
                if response.headers.get("content-type", "").startswith("application/problem+json"):
                    self.refused[sale_id] = response.json().get("detail", "")
                    self.stats.refused += 1
                    return
                self.stats.wrong_answers.append(
                    f"{self.branch}/{self.till_id} {sale_id}: {response.status_code} without a problem body"
                )
                return
            if response is not None and response.status_code < 500:
                self.stats.wrong_answers.append(
                    f"{self.branch}/{self.till_id} {sale_id}: {response.status_code} {response.text[:300]}"
                )
                return
            if response is not None:
                self.stats.server_errors += 1
            # No answer: the agent may or may not have it. Same sale, same id, again.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hard_stop.wait(), backoff)
            backoff = min(backoff * 2, 1.0)
        self.unresolved.add(sale_id)
        self.stats.unresolved += 1

    def _record(self, receipt: dict[str, Any]) -> None:
        sale = AckedSale(
            sale_id=receipt["sale_id"],
            receipt_number=receipt["receipt_number"],
            total=receipt["total"],
            change=receipt["change"],
            payments=tuple((p["type"], p["amount"]) for p in receipt["payments"]),
        )
        known = self.acked.get(sale.sale_id)
        if known is not None and known != sale:
            self.stats.wrong_answers.append(
                f"{self.branch}/{self.till_id} {sale.sale_id}: answered {sale} after {known}"
            )
        self.acked[sale.sale_id] = sale
        self.stats.acked = len(self.acked)

    async def _check_repeat(self, client: httpx.AsyncClient) -> None:
        """Post an acknowledged sale again: the original receipt must come back, nothing new."""
        sale_id = self.rng.choice(list(self.acked))
        known = self.acked[sale_id]
        try:
            response = await client.post("/api/v1/sales", json=self._bodies[sale_id])
        except httpx.HTTPError:
            return
        if response.status_code >= 500 or response.status_code in REFUSAL_STATUSES:
            return
        self.stats.repeats_checked += 1
        if response.status_code != 200 or response.json()["receipt_number"] != known.receipt_number:
            self.stats.wrong_answers.append(
                f"{self.branch}/{self.till_id} repeat of {sale_id}: {response.status_code} "
                f"{response.text[:300]}"
            )
