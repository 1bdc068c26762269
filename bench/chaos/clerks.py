"""The back office of each store: goods receipts, write-offs and transfers to other
branches, posted through the agent's stock API with the manager's token.

Like a till, a clerk who hears nothing back posts the same document again with the
same ``document_id`` until answered; every acknowledged document must exist at the
agent afterwards, and its stock moves at central.
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

__all__ = ["Clerk", "ClerkStats"]

REFUSAL_STATUSES = frozenset({503, 507})


@dataclass(slots=True)
class ClerkStats:
    acked: dict[str, str] = field(default_factory=dict)  # document id -> doc type
    refused: set[str] = field(default_factory=set)
    unresolved: set[str] = field(default_factory=set)
    wrong_answers: list[str] = field(default_factory=list)
    retries: int = 0


class Clerk:
    """Posts documents for one branch; transfers go out here and in at ``peers``."""

    def __init__(
        self,
        *,
        branch: str,
        base_url: str,
        token: str,
        peers: dict[str, tuple[str, str]],
        rng: random.Random,
        interval_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self.branch = branch
        self.base_url = base_url
        self.token = token
        # other branch -> (its agent's URL, its manager token)
        self.peers = peers
        self.rng = rng
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        # branch -> what was posted there by this clerk
        self.stats: dict[str, ClerkStats] = {branch: ClerkStats()}
        for peer in peers:
            self.stats[peer] = ClerkStats()

    def _lines(self, *, cost: bool) -> list[dict[str, Any]]:
        lines = []
        for product in self.rng.sample(DEMO_PRODUCTS, self.rng.randint(1, 3)):
            quantity = (
                f"{self.rng.randint(500, 20000) / 1000:.3f}"
                if product.weighed
                else str(self.rng.randint(1, 24))
            )
            line: dict[str, Any] = {"sku": product.sku, "quantity": quantity}
            if cost:
                line["unit_cost"] = product.price * 6 // 10
            lines.append(line)
        return lines

    async def run(self, stop: asyncio.Event, hard_stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while not stop.is_set():
                way = self.rng.random()
                doc_id = f"{self.branch}-{uuid.uuid4().hex[:20]}"
                body: dict[str, Any]
                if way < 0.4:
                    body = {
                        "document_id": doc_id,
                        "doc_type": "goods_receipt",
                        "supplier": self.rng.choice(["ACME", "Dairy Co", "Bakery"]),
                        "lines": self._lines(cost=True),
                        "author": "clerk",
                    }
                    await self._post(client, self.branch, body, hard_stop)
                elif way < 0.7 or not self.peers:
                    body = {
                        "document_id": doc_id,
                        "doc_type": "write_off",
                        "reason": self.rng.choice(["damaged", "expired", "theft"]),
                        "lines": self._lines(cost=False),
                        "author": "clerk",
                        # Random quantities, not the store's stock: the agent would
                        # refuse one beyond the stock on hand (409) without the flag.
                        "allow_negative": True,
                    }
                    await self._post(client, self.branch, body, hard_stop)
                else:
                    peer = self.rng.choice(sorted(self.peers))
                    lines = self._lines(cost=False)
                    out: dict[str, Any] = {
                        "document_id": doc_id,
                        "doc_type": "transfer_out",
                        "counterpart_branch": peer,
                        "transfer_ref": doc_id,
                        "lines": lines,
                        "author": "clerk",
                        "allow_negative": True,
                    }
                    if await self._post(client, self.branch, out, hard_stop):
                        incoming = {
                            "document_id": f"{doc_id}-in",
                            "doc_type": "transfer_in",
                            "counterpart_branch": self.branch,
                            "transfer_ref": doc_id,
                            "lines": lines,
                            "author": "clerk",
                        }
                        await self._post(client, peer, incoming, hard_stop)
                pause = self.rng.uniform(0.5, 1.5) * self.interval_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)

    async def _post(
        self,
        client: httpx.AsyncClient,
        branch: str,
        body: dict[str, Any],
        hard_stop: asyncio.Event,
    ) -> bool:
        url, token = (self.base_url, self.token) if branch == self.branch else self.peers[branch]
        stats = self.stats[branch]
        doc_id = body["document_id"]
        backoff = 0.1
        first = True
        while not hard_stop.is_set():
            if not first:
                stats.retries += 1
            first = False
            try:
                response = await client.post(
                    f"{url}/api/v1/stock/documents",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code in (200, 201):
                stats.acked[doc_id] = body["doc_type"]
                return True
            if response is not None and response.status_code in REFUSAL_STATUSES:
                stats.refused.add(doc_id)
                return False
            if response is not None and response.status_code < 500:
                stats.wrong_answers.append(
                    f"{branch} document {doc_id}: {response.status_code} {response.text[:300]}"
                )
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hard_stop.wait(), backoff)
            backoff = min(backoff * 2, 1.0)
        stats.unresolved.add(doc_id)
        return False
