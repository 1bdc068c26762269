"""The CI-sized fault run: the whole chain as real processes, every fault kind twice.

Two branches with two tills each (each till with a simulated fiscal printer) sell,
and their back offices post goods receipts, write-offs and transfers, for about a
minute while agents, ingest workers and the API process are SIGKILLed, the
nats-server is killed or stopped and restarted, branches lose their link (reset or
silently stalled), printers lose answers or run out of paper and an agent's disk
fills up. Afterwards central must hold exactly the agents' books: every event once,
every receipt once, the same revenue per payment type and stock per product; every
sale a till was told about exists, every printed receipt belongs to one sale.

The seed is random per run and printed on failure; re-run one with
``BACKROOM_CHAOS_SEED=<seed>`` (or at length with ``python -m bench.chaos --seed``).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from bench.chaos import FAULT_KINDS, ChaosConfig, run_chaos


async def test_books_agree_after_crashes_and_outages(db_url: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("BACKROOM_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    config = ChaosConfig(
        work_dir=tmp_path / "chain",
        branches=2,
        tills_per_branch=2,
        ingest_workers=2,
        duration_s=60.0,
        seed=seed,
        database_url=db_url,
        sale_interval_s=0.3,
        faults_per_kind=2,
        min_cut_s=3.0,
        max_cut_s=10.0,
        converge_timeout_s=90.0,
    )
    report = await run_chaos(config)
    summary = report.summary()
    explain = f"seed {seed}; logs in {config.work_dir / 'logs'}; {json.dumps(summary)}"

    assert report.incidents == [], explain
    assert report.verdict.problems == [], explain
    assert (summary["missing"], summary["duplicated"], summary["unexpected"]) == (0, 0, 0), explain
    assert report.converge_s is not None, explain
    # The run did what it claims: faults of every kind, real load, answers checked.
    assert summary["faults"] == {kind: 2 for kind in FAULT_KINDS}, explain
    assert summary["sales_acked"] > 100, explain
    assert summary["events_at_central"] == summary["events_produced"], explain
    assert summary["events_produced"] >= summary["sales_acked"], explain
    assert summary["repeats_checked"] > 0, explain
    assert summary["documents_acked"] > 10, explain
    assert "fiscal receipts printed" in summary["checks"], explain
    assert "stock balance per product" in summary["checks"], explain
    assert "report summaries equal their rebuild from the raw records" in summary["checks"], explain
    for totals in report.verdict.branches.values():
        assert totals.receipts_agent == totals.receipts_central == totals.receipts_api, explain
        assert totals.acked_by_tills <= totals.receipts_agent, explain
