"""A till simulator: posts realistic sales to an agent's till API (demo and benchmarks)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from typing import Any

import httpx

__all__ = ["TillSimulator", "random_basket"]

log = logging.getLogger(__name__)

# (barcode or sku, weighed) of the demo catalog.
_ITEMS: tuple[tuple[str, str, bool], ...] = (
    ("barcode", "4006381333931", False),
    ("barcode", "4001686301265", False),
    ("sku", "APPLE-KG", True),
    ("barcode", "8711000530085", False),
    ("barcode", "5449000000996", False),
    ("sku", "CHEESE-KG", True),
)


def random_basket(rng: random.Random) -> list[dict[str, Any]]:
    lines = []
    for kind, code, weighed in rng.sample(_ITEMS, rng.randint(1, len(_ITEMS))):
        quantity = f"{rng.randint(150, 2500) / 1000:.3f}" if weighed else str(rng.randint(1, 4))
        lines.append({kind: code, "quantity": quantity})
    return lines


class TillSimulator:
    def __init__(self, base_url: str, token: str, *, seed: int | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.rng = random.Random(seed)
        self.posted = 0
        self.failed = 0

    async def post_sale(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        sale_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "sale_id": sale_id,
            "shift_id": "demo",
            "cashier": self.rng.choice(["anna", "ben", "chris"]),
            "lines": random_basket(self.rng),
            # Cash well above any demo basket; the agent computes the change.
            "payments": [{"type": "cash", "amount": 20000}],
        }
        response = await client.post(
            f"{self.base_url}/api/v1/sales",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if response.status_code in (200, 201):
            self.posted += 1
            result: dict[str, Any] = response.json()
            return result
        self.failed += 1
        log.warning("sale refused: %s %s", response.status_code, response.text)
        return None

    async def run(self, interval_s: float, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not stop.is_set():
                try:
                    await self.post_sale(client)
                except httpx.HTTPError as exc:
                    self.failed += 1
                    log.warning("till could not reach the agent: %s", exc)
                try:
                    await asyncio.wait_for(stop.wait(), interval_s)
                except TimeoutError:
                    pass
