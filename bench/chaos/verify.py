"""Branch by branch: the tills' receipts, the agent's books and central's must agree.

Every difference is a failure, named precisely so a failing run says what went
wrong where: a sale a till was told about that the agent does not have, an event
the agent recorded that central never stored, a receipt stored twice, revenue per
payment type or stock per product that differs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from bench.chaos.books import AgentBooks, CentralBooks, SaleRecord
from bench.chaos.clerks import ClerkStats
from bench.chaos.tills import Till

__all__ = ["BranchTotals", "Verdict", "compare"]

# Problems listed in full; beyond this only counted (one bug can produce thousands).
_MAX_LISTED = 20


@dataclass(slots=True)
class BranchTotals:
    receipts_agent: int = 0
    receipts_central: int = 0
    receipts_api: int | None = None
    events_agent: int = 0
    events_central: int = 0
    acked_by_tills: int = 0
    refused_to_tills: int = 0
    revenue: dict[str, int] = field(default_factory=dict)
    stock_skus: int | None = None
    documents_acked: int = 0
    fiscalized: int | None = None


@dataclass(slots=True)
class Verdict:
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    checks: set[str] = field(default_factory=set)
    not_compared: set[str] = field(default_factory=set)
    branches: dict[str, BranchTotals] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _MAX_LISTED:
            self.problems.append(message)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def compare(
    agents: dict[str, AgentBooks],
    central: CentralBooks,
    tills: dict[str, list[Till]],
    api_receipt_totals: dict[str, int] | None = None,
    printed: dict[str, dict[str, list[tuple[int, int]]]] | None = None,
    documents: dict[str, list[ClerkStats]] | None = None,
) -> Verdict:
    """``printed``: per branch and till, the fiscal printer's journal of closed receipts
    as (fiscal number, amount in minor units); None when the run had no printers."""
    verdict = Verdict()
    if central.dead_letters:
        verdict.fail(f"central holds {central.dead_letters} dead letters")
    verdict.checks.add("dead letters")
    for branch, agent in sorted(agents.items()):
        totals = BranchTotals()
        verdict.branches[branch] = totals
        _check_tills(verdict, branch, agent, tills.get(branch, []), totals)
        _check_events(verdict, branch, agent, central, totals)
        _check_receipts(verdict, branch, agent, central.receipts.get(branch, []), totals)
        if api_receipt_totals is not None:
            totals.receipts_api = api_receipt_totals.get(branch, 0)
            verdict.checks.add("receipt count through the head-office API")
            if totals.receipts_api != totals.receipts_agent:
                verdict.fail(
                    f"{branch}: the API counts {totals.receipts_api} receipts, "
                    f"the agent has {totals.receipts_agent}"
                )
        central_revenue = central.revenue.get(branch, {})
        totals.revenue = dict(sorted(agent.revenue.items()))
        verdict.checks.add("revenue per payment type")
        if central_revenue != agent.revenue:
            verdict.fail(
                f"{branch}: revenue per payment type differs: agent {agent.revenue}, "
                f"central {central_revenue}"
            )
        _check_stock(verdict, branch, agent, central, totals)
        _check_fiscal(
            verdict,
            branch,
            agent,
            central.receipts.get(branch, []),
            None if printed is None else printed.get(branch, {}),
            totals,
        )
        if documents is not None:
            _check_documents(verdict, branch, agent, documents.get(branch, []), totals)
        verdict.checks.add("agent database integrity")
        if agent.integrity != "ok":
            verdict.fail(f"{branch}: the agent's database is damaged: {agent.integrity}")
    if central.summaries_differ is None:
        verdict.not_compared.add("report summaries")
    else:
        verdict.checks.add("report summaries equal their rebuild from the raw records")
        for name in central.summaries_differ:
            verdict.fail(f"report summary table {name} differs from its rebuild")
    if central.transfer_discrepancies is None:
        verdict.not_compared.add("transfer discrepancies")
    else:
        # The clerks receive what was sent, once: a document retried or an event
        # redelivered is the same document, never a second receipt.
        verdict.checks.add("transfers received as sent, once")
        for ref, what in sorted(central.transfer_discrepancies.items()):
            verdict.fail(f"transfer {ref}: {', '.join(what)}")
    extra = set(central.events) - set(agents)
    for branch in sorted(extra):
        verdict.unexpected += len(central.events[branch])
        verdict.fail(f"central holds events of {branch!r}, which no agent of this run is")
    return verdict


def _check_tills(
    verdict: Verdict, branch: str, agent: AgentBooks, tills: list[Till], totals: BranchTotals
) -> None:
    """What a till was told is recorded; what it was refused is not; no sale twice."""
    verdict.checks.add("till acknowledgements at the agent")
    by_key = {(s.till, s.sale_id): s for s in agent.sales}
    doubled = [k for k, n in Counter((s.till, s.sale_id) for s in agent.sales).items() if n > 1]
    for key in doubled:
        verdict.duplicated += 1
        verdict.fail(f"{branch}: the agent recorded sale {key} more than once")
    for till in tills:
        totals.acked_by_tills += len(till.acked)
        totals.refused_to_tills += len(till.refused)
        for msg in till.stats.wrong_answers:
            verdict.fail(f"{branch}: wrong answer to a till: {msg}")
        for sale_id, acked in till.acked.items():
            record = by_key.get((till.till_id, sale_id))
            if record is None:
                verdict.missing += 1
                verdict.fail(
                    f"{branch}/{till.till_id}: acknowledged sale {sale_id} is not at the agent"
                )
            elif (record.receipt_number, record.total, record.change) != (
                acked.receipt_number,
                acked.total,
                acked.change,
            ):
                verdict.fail(
                    f"{branch}/{till.till_id}: sale {sale_id} at the agent is {record}, "
                    f"the till was told {acked}"
                )
        for sale_id in till.refused:
            if (till.till_id, sale_id) in by_key:
                verdict.fail(
                    f"{branch}/{till.till_id}: sale {sale_id} was refused to the till "
                    "but recorded by the agent"
                )
        # The agent may hold sales a till never heard back about (answer lost, run
        # ended first), never sales no till posted.
        posted = set(till.acked) | till.unresolved
        for record in agent.sales:
            if record.till == till.till_id and record.sale_id not in posted:
                verdict.unexpected += 1
                verdict.fail(
                    f"{branch}/{till.till_id}: the agent holds sale {record.sale_id}, "
                    "which the till has no answer for"
                )


def _check_events(
    verdict: Verdict, branch: str, agent: AgentBooks, central: CentralBooks, totals: BranchTotals
) -> None:
    verdict.checks.update({"event sequence gapless at the agent", "events agent = central"})
    totals.events_agent = len(agent.events)
    if agent.seqs != list(range(1, len(agent.seqs) + 1)):
        verdict.fail(f"{branch}: the agent's event sequence is not 1..{len(agent.seqs)}")
    if agent.unsent:
        verdict.fail(f"{branch}: {agent.unsent} events still unsent in the agent's outbox")
    stored = central.events.get(branch, [])
    totals.events_central = len(stored)
    counts = Counter(event_id for event_id, _seq, _kind in stored)
    for event_id, n in counts.items():
        if n > 1:
            verdict.duplicated += n - 1
            verdict.fail(f"{branch}: central stored event {event_id} {n} times")
    seq_counts = Counter(seq for _id, seq, _kind in stored)
    for seq, n in seq_counts.items():
        if n > 1:
            verdict.duplicated += n - 1
            verdict.fail(f"{branch}: central stored sequence {seq} {n} times")
    for event_id, (seq, kind) in sorted(agent.events.items(), key=lambda item: item[1][0]):
        if event_id not in counts:
            verdict.missing += 1
            verdict.fail(f"{branch}: event #{seq} ({kind}, {event_id}) never reached central")
    central_by_id = {event_id: (seq, kind) for event_id, seq, kind in stored}
    for event_id, (seq, kind) in central_by_id.items():
        if event_id not in agent.events:
            verdict.unexpected += 1
            verdict.fail(f"{branch}: central holds event #{seq} {event_id} the agent never made")
        elif agent.events[event_id] != (seq, kind):
            verdict.fail(
                f"{branch}: event {event_id} is {agent.events[event_id]} at the agent, "
                f"{(seq, kind)} at central"
            )
    contiguous = central.contiguous_seq.get(branch, 0)
    if agent.seqs and contiguous != agent.seqs[-1]:
        verdict.fail(
            f"{branch}: central's contiguous sequence is {contiguous}, "
            f"the agent's last is {agent.seqs[-1]}"
        )


def _check_receipts(
    verdict: Verdict,
    branch: str,
    agent: AgentBooks,
    receipts: list[SaleRecord],
    totals: BranchTotals,
) -> None:
    verdict.checks.add("receipts agent = central")
    totals.receipts_agent = len(agent.sales)
    totals.receipts_central = len(receipts)
    keyed = Counter((r.till, r.sale_id) for r in receipts)
    for key, n in keyed.items():
        if n > 1:
            verdict.duplicated += n - 1
            verdict.fail(f"{branch}: central holds sale {key} {n} times")
    at_central = {(r.till, r.sale_id): r for r in receipts}
    for sale in agent.sales:
        stored = at_central.get((sale.till, sale.sale_id))
        if stored is None:
            if sale.event_id not in agent.events:
                verdict.fail(f"{branch}: sale {sale.sale_id} has no event in the agent's outbox")
            continue  # counted as missing through its event
        if stored != replace(sale, status=""):
            verdict.fail(
                f"{branch}: sale {sale.sale_id} is {sale} at the agent, {stored} at central"
            )
    agent_keys = {(s.till, s.sale_id) for s in agent.sales}
    for key in set(at_central) - agent_keys:
        verdict.unexpected += 1
        verdict.fail(f"{branch}: central holds sale {key}, which the agent does not have")


def _check_stock(
    verdict: Verdict, branch: str, agent: AgentBooks, central: CentralBooks, totals: BranchTotals
) -> None:
    if agent.stock is None or central.stock is None:
        verdict.not_compared.add("stock balance per product (no stock balances on one side yet)")
        return
    verdict.checks.add("stock balance per product")
    at_central = central.stock.get(branch, {})
    totals.stock_skus = len(agent.stock)
    for sku in sorted(set(agent.stock) | set(at_central)):
        mine, theirs = agent.stock.get(sku, 0), at_central.get(sku, 0)
        if mine != theirs:
            verdict.fail(f"{branch}: stock of {sku} is {mine} at the agent, {theirs} at central")


def _check_fiscal(
    verdict: Verdict,
    branch: str,
    agent: AgentBooks,
    receipts: list[SaleRecord],
    printed: dict[str, list[tuple[int, int]]] | None,
    totals: BranchTotals,
) -> None:
    """Each printed receipt belongs to exactly one sale of the same amount, each
    fiscalized sale was printed once, and central knows the same fiscal numbers."""
    if printed is None:
        verdict.not_compared.add("fiscal receipts printed (no fiscal printers in this run)")
        return
    verdict.checks.add("fiscal receipts printed")
    totals.fiscalized = 0
    for sale in agent.sales:
        if sale.status == "pending_fiscal":
            verdict.fail(
                f"{branch}/{sale.till}: sale {sale.sale_id} is still waiting for the printer"
            )
    tills = {s.till for s in agent.sales} | set(printed)
    for till in sorted(tills):
        journal = printed.get(till, [])
        fiscalized = {s.fiscal_number: s for s in agent.sales if s.till == till and s.fiscal_number}
        totals.fiscalized += len(fiscalized)
        numbers = Counter(str(number) for number, _amount in journal)
        for number, n in numbers.items():
            if n > 1:
                verdict.fail(f"{branch}/{till}: the printer closed receipt {number} {n} times")
        agent_numbers = Counter(
            s.fiscal_number for s in agent.sales if s.till == till and s.fiscal_number
        )
        for number, n in agent_numbers.items():
            if n > 1:
                verdict.duplicated += n - 1
                verdict.fail(f"{branch}/{till}: fiscal number {number} is on {n} sales")
        if len(journal) != len(fiscalized):
            verdict.fail(
                f"{branch}/{till}: the printer closed {len(journal)} receipts, "
                f"the agent has {len(fiscalized)} fiscalized sales"
            )
        for printed_number, amount in journal:
            owner = fiscalized.get(str(printed_number))
            if owner is None:
                verdict.fail(
                    f"{branch}/{till}: printed receipt {printed_number} belongs to no sale"
                )
            elif owner.total != amount:
                verdict.fail(
                    f"{branch}/{till}: printed receipt {printed_number} is for {amount}, "
                    f"its sale {owner.sale_id} for {owner.total}"
                )
        central_numbers = Counter(
            r.fiscal_number for r in receipts if r.till == till and r.fiscal_number
        )
        if central_numbers != agent_numbers:
            verdict.fail(f"{branch}/{till}: central's fiscal numbers differ from the agent's")


def _check_documents(
    verdict: Verdict,
    branch: str,
    agent: AgentBooks,
    clerks: list[ClerkStats],
    totals: BranchTotals,
) -> None:
    verdict.checks.add("stock documents acknowledged at the agent")
    for stats in clerks:
        totals.documents_acked += len(stats.acked)
        for msg in stats.wrong_answers:
            verdict.fail(f"{branch}: wrong answer to a clerk: {msg}")
        for doc_id, doc_type in stats.acked.items():
            if agent.documents.get(doc_id) != doc_type:
                verdict.missing += 1
                verdict.fail(f"{branch}: acknowledged {doc_type} {doc_id} is not at the agent")
        for doc_id in stats.refused:
            if doc_id in agent.documents:
                verdict.fail(f"{branch}: refused document {doc_id} was posted by the agent")
