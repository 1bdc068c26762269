"""The whole chain as real processes, and the faults the harness inflicts on it.

:class:`Chain` starts a nats-server with JetStream on file storage (fsync always,
so a SIGKILLed server keeps what it acknowledged), central's API process and its
ingest worker processes on one database (SQLite or PostgreSQL), and one agent per
branch behind a :class:`~bench.chaos.proxy.LinkProxy` to NATS. :func:`run_chaos`
drives tills against the agents, injects faults at random moments from a seeded
RNG, waits until central has converged and compares the books.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.chaos.books import (
    read_agent_books,
    read_central_books,
    read_central_progress,
    read_outbox_progress,
)
from bench.chaos.clerks import Clerk, ClerkStats
from bench.chaos.processes import ManagedProcess, wait_http_ok
from bench.chaos.proxy import LinkProxy
from bench.chaos.tills import Till
from bench.chaos.verify import Verdict, compare
from central.embedded_nats import EmbeddedNats, free_port
from devices.sim import SimulatorHandle, start_simulator

__all__ = ["FAULT_KINDS", "AgentHandle", "Chain", "ChaosConfig", "ChaosReport", "run_chaos"]

log_prefix = "chaos"

FAULT_KINDS = (
    "agent_kill",
    "ingest_kill",
    "api_kill",
    "nats_restart",
    "branch_cut",
    "fiscal_answer_lost",
    "paper_out",
    "disk_full",
)


@dataclass(slots=True)
class ChaosConfig:
    work_dir: Path
    branches: int = 2
    tills_per_branch: int = 2
    ingest_workers: int = 2
    # Load and faults last this long; then the tills stop and central must converge.
    duration_s: float = 60.0
    seed: int = 0
    # Central's database; empty: a SQLite file in work_dir.
    database_url: str = ""
    sale_interval_s: float = 0.3
    # Each branch's back office posts a stock document about this often.
    document_interval_s: float = 2.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    # Faults of each kind; None: one per ``mean_fault_gap_s`` spread over the kinds.
    faults_per_kind: int | None = None
    mean_fault_gap_s: float = 6.0
    warmup_s: float = 3.0
    min_cut_s: float = 3.0
    max_cut_s: float = 15.0
    converge_timeout_s: float = 180.0
    # A simulated fiscal printer (Datecs X, over TCP) at every till.
    fiscal_printers: bool = True
    # Print progress lines (the bench); tests stay quiet.
    verbose: bool = False


@dataclass(slots=True)
class FaultRecord:
    kind: str
    target: str
    detail: str
    started: float
    ended: float = 0.0


@dataclass(slots=True)
class ChaosReport:
    config: ChaosConfig
    verdict: Verdict
    faults: list[FaultRecord]
    converge_s: float | None
    events_produced: int
    events_at_central: int
    load_s: float
    tills: list[Till]
    clerks: list[Clerk] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    reader_errors: int = 0

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.incidents and self.converge_s is not None

    def summary(self) -> dict[str, Any]:
        acked = sum(len(t.acked) for t in self.tills)
        database = "postgresql" if self.config.database_url.startswith("postgresql") else "sqlite"
        return {
            "ok": self.ok,
            "seed": self.config.seed,
            "branches": self.config.branches,
            "tills": len(self.tills),
            "ingest_workers": self.config.ingest_workers,
            "database": database,
            "load_s": round(self.load_s, 1),
            "events_produced": self.events_produced,
            "events_at_central": self.events_at_central,
            "missing": self.verdict.missing,
            "duplicated": self.verdict.duplicated,
            "unexpected": self.verdict.unexpected,
            "faults": dict(sorted(Counter(f.kind for f in self.faults).items())),
            "converge_s": None if self.converge_s is None else round(self.converge_s, 2),
            "sales_acked": acked,
            "sales_per_s": round(acked / self.load_s, 1) if self.load_s else 0.0,
            "sales_refused": sum(len(t.refused) for t in self.tills),
            "sales_unresolved": sum(len(t.unresolved) for t in self.tills),
            "till_retries": sum(t.stats.retries for t in self.tills),
            "till_server_errors": sum(t.stats.server_errors for t in self.tills),
            "repeats_checked": sum(t.stats.repeats_checked for t in self.tills),
            "documents_acked": sum(len(s.acked) for c in self.clerks for s in c.stats.values()),
            "documents_refused": sum(len(s.refused) for c in self.clerks for s in c.stats.values()),
            "head_office_reads_failed": self.reader_errors,
            "checks": sorted(self.verdict.checks),
            "not_compared": sorted(self.verdict.not_compared),
            "problems": self.verdict.problem_count + len(self.incidents),
            "first_problems": (self.incidents + self.verdict.problems)[:10],
        }


def _base_env() -> dict[str, str]:
    """The harness's environment without any BACKROOM_* setting that could leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(slots=True)
class AgentHandle:
    branch: str
    process: ManagedProcess
    proxy: LinkProxy
    http_port: int
    data_dir: Path
    tokens: dict[str, str]
    # till -> its simulated fiscal printer
    printers: dict[str, SimulatorHandle] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "agent.db"


class Chain:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.work_dir = config.work_dir.resolve()
        self.logs = self.work_dir / "logs"
        self.database_url = (
            config.database_url or f"sqlite+aiosqlite:///{self.work_dir / 'central' / 'central.db'}"
        )
        self.nats = EmbeddedNats(self.work_dir / "nats", sync_always=True)
        self.api_port = free_port()
        self.api: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []
        self.agents: dict[str, AgentHandle] = {}
        self.engine: AsyncEngine | None = None
        # Processes a fault has taken down on purpose; the watchdog leaves them alone.
        self.down: set[str] = set()
        self.incidents: list[str] = []
        self.api_token = ""

    # --- start and stop -------------------------------------------------------------

    def _central_env(self) -> dict[str, str]:
        return {
            **_base_env(),
            "BACKROOM_DATABASE_URL": self.database_url,
            "BACKROOM_NATS_URL": self.nats.url,
            "BACKROOM_DATA_DIR": str(self.work_dir / "central"),
            "BACKROOM_HTTP_PORT": str(self.api_port),
            "BACKROOM_INGEST_IN_PROCESS": "false",
            "BACKROOM_INGEST_ACK_WAIT_S": "5",
            "BACKROOM_INGEST_FETCH_TIMEOUT_S": "0.3",
            "BACKROOM_INGEST_BATCH": "200",
        }

    async def start(self) -> None:
        from central.db import create_engine, upgrade

        self.work_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.nats.start)
        await upgrade(self.database_url)
        self.engine = create_engine(self.database_url, pool_size=4)
        codes = [f"C{n:02d}" for n in range(1, self.config.branches + 1)]
        await self._register(codes)
        env = self._central_env()
        self.api = ManagedProcess(
            "api", ["central", "serve"], env=env, log_path=self.logs / "api.log", cwd=self.work_dir
        )
        self.workers = [
            ManagedProcess(
                f"ingest-{i}",
                ["central", "ingest", "--workers", "1"],
                env=env,
                log_path=self.logs / f"ingest-{i}.log",
                cwd=self.work_dir,
            )
            for i in range(1, self.config.ingest_workers + 1)
        ]
        self.api.start()
        for worker in self.workers:
            worker.start()
        await asyncio.to_thread(wait_http_ok, self.api_url + "/health", 60.0, self.api)
        for code in codes:
            self.agents[code] = await self._make_agent(code)
        await asyncio.gather(*(self.start_agent(code) for code in codes))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def _register(self, codes: list[str]) -> None:
        from central.db import create_sessionmaker
        from central.errors import ConflictError
        from central.services.branches import add_branch

        assert self.engine is not None
        from central.services.users import create_user

        for code in codes:
            with contextlib.suppress(ConflictError):
                async with create_sessionmaker(self.engine)() as session, session.begin():
                    await add_branch(session, code=code, name=f"Chaos {code}")
        # Head office reads the consolidated records as an analyst.
        async with create_sessionmaker(self.engine)() as session, session.begin():
            issued = await create_user(
                session, name=f"chaos-reader-{os.getpid()}-{time.time_ns()}", role="analyst"
            )
        self.api_token = issued.token

    async def _make_agent(self, code: str) -> AgentHandle:
        proxy = LinkProxy(self.nats.port, name=code)
        await proxy.start()
        port = free_port()
        data_dir = self.work_dir / f"agent-{code}"
        tokens = {
            f"T{i}": f"{code}-till-{i}-secret" for i in range(1, self.config.tills_per_branch + 1)
        }
        config = self.work_dir / f"agent-{code}.toml"
        printers: dict[str, SimulatorHandle] = {}
        tills = ""
        for till, token in tokens.items():
            tills += f'\n[[agent.tills]]\nid = "{till}"\ntoken = "{token}"\n'
            if self.config.fiscal_printers:
                printers[till] = start_simulator("fiscal")
                tills += (
                    "[agent.tills.fiscal_printer]\n"
                    f'port = "{printers[till].url}"\nprotocol = "datecs-x"\n'
                )
        config.write_text(
            "[agent]\n"
            f'branch = "{code}"\nname = "Chaos {code}"\ntimezone = "Europe/Berlin"\n'
            f'data_dir = "{data_dir}"\nnats_url = "{proxy.url}"\n'
            f'http_host = "127.0.0.1"\nhttp_port = {port}\ndemo_catalog = true\n'
            "heartbeat_interval_s = 1.0\noutbox_publish_timeout_s = 2.0\n"
            "fiscal_retry_interval_s = 1.0\ndevice_poll_interval_s = 2.0\n"
            f'manager_token = "{code}-manager-secret"\n' + tills
        )
        process = ManagedProcess(
            f"agent-{code}",
            ["branch_agent", "--config", str(config), "run"],
            env=_base_env(),
            log_path=self.logs / f"agent-{code}.log",
            cwd=self.work_dir,
        )
        return AgentHandle(code, process, proxy, port, data_dir, tokens, printers)

    async def start_agent(self, code: str) -> None:
        agent = self.agents[code]
        agent.process.start()
        await asyncio.to_thread(wait_http_ok, agent.url + "/health", 90.0, agent.process)

    async def stop(self) -> None:
        """Stop everything that was started, whatever state it is in."""
        for agent in self.agents.values():
            await asyncio.to_thread(agent.process.stop)
        for agent in self.agents.values():
            await agent.proxy.close()
            for printer in agent.printers.values():
                await asyncio.to_thread(printer.stop)
        for worker in self.workers:
            await asyncio.to_thread(worker.stop)
        if self.api is not None:
            await asyncio.to_thread(self.api.stop)
        await asyncio.to_thread(self.nats.stop)
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    def processes(self) -> list[ManagedProcess]:
        found = [a.process for a in self.agents.values()] + self.workers
        return found + ([self.api] if self.api is not None else [])

    async def watchdog(self, stop: asyncio.Event) -> None:
        """A process that dies on its own (not by a fault) is an incident: note it, restart it."""
        while not stop.is_set():
            for process in self.processes():
                if process.name not in self.down and not process.is_running():
                    self.incidents.append(
                        f"{process.name} exited on its own (code {process.returncode}); "
                        f"see {process.log_path}"
                    )
                    process.start()
            if not self.nats.is_running() and "nats" not in self.down:
                self.incidents.append("nats-server exited on its own")
                await asyncio.to_thread(self.nats.start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # --- reading the books ------------------------------------------------------------

    async def progress(self) -> tuple[bool, int, int]:
        """(converged, events produced, events at central)."""
        assert self.engine is not None
        contiguous, counts = await read_central_progress(self.engine)
        converged = True
        produced = stored = 0
        for code, agent in self.agents.items():
            outbox = await asyncio.to_thread(read_outbox_progress, agent.database_path)
            produced += outbox.events
            stored += counts.get(code, 0)
            if (
                outbox.unsent
                or outbox.pending_fiscal
                or contiguous.get(code, 0) != outbox.max_seq
                or counts.get(code, 0) != outbox.events
            ):
                converged = False
        return converged, produced, stored

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def printed(self) -> dict[str, dict[str, list[tuple[int, int]]]] | None:
        """Each printer's journal: (fiscal number, amount in cents) of every closed receipt."""
        if not self.config.fiscal_printers:
            return None
        journals: dict[str, dict[str, list[tuple[int, int]]]] = {}
        for code, agent in self.agents.items():
            journals[code] = {}
            for till, printer in agent.printers.items():
                with printer.sim.lock:
                    journals[code][till] = [
                        (r.number, int(r.amount * 100)) for r in printer.sim.receipts
                    ]
        return journals

    async def api_receipt_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        async with httpx.AsyncClient(
            base_url=self.api_url, timeout=30, headers=self.api_headers
        ) as client:
            for code in self.agents:
                response = await client.get("/api/v1/receipts", params={"branch": code, "limit": 1})
                response.raise_for_status()
                totals[code] = int(response.json()["total"])
        return totals


# --- faults -----------------------------------------------------------------------------

FaultFn = Callable[["Chain", random.Random, "FaultRecord"], Awaitable[None]]


async def _down(chain: Chain, process: ManagedProcess, rng: random.Random, seconds: float) -> None:
    chain.down.add(process.name)
    try:
        await asyncio.to_thread(process.kill)
        await asyncio.sleep(rng.uniform(0.2, seconds))
    finally:
        process.start()
        chain.down.discard(process.name)


async def fault_agent_kill(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    agent = chain.agents[record.target]
    chain.down.add(agent.process.name)
    try:
        await asyncio.to_thread(agent.process.kill)
        await asyncio.sleep(rng.uniform(0.2, 3.0))
    finally:
        await chain.start_agent(record.target)
        chain.down.discard(agent.process.name)


async def fault_ingest_kill(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    worker = next(w for w in chain.workers if w.name == record.target)
    await _down(chain, worker, rng, 3.0)


async def fault_api_kill(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    assert chain.api is not None
    await _down(chain, chain.api, rng, 2.0)
    await asyncio.to_thread(wait_http_ok, chain.api_url + "/health", 60.0, chain.api)


async def fault_nats_restart(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    how = rng.choice(["kill", "stop"])
    record.detail = how
    chain.down.add("nats")
    try:
        await asyncio.to_thread(chain.nats.kill if how == "kill" else chain.nats.stop)
        await asyncio.sleep(rng.uniform(0.5, 5.0))
    finally:
        await asyncio.to_thread(chain.nats.start)
        chain.down.discard("nats")


async def fault_branch_cut(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    proxy = chain.agents[record.target].proxy
    mode = rng.choice(["reset", "stall"])
    seconds = rng.uniform(chain.config.min_cut_s, chain.config.max_cut_s)
    record.detail = f"{mode} for {seconds:.1f}s"
    await proxy.cut(mode)  # type: ignore[arg-type]
    try:
        await asyncio.sleep(seconds)
    finally:
        await proxy.restore()


# Datecs commands whose answer the printer may lose: open, sale line, payment, close.
_FISCAL_COMMANDS = (0x30, 0x31, 0x35, 0x38)


def _printer(chain: Chain, target: str) -> SimulatorHandle:
    code, till = target.split("/")
    return chain.agents[code].printers[till]


async def fault_fiscal_answer_lost(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    """The printer executes the next such command but its answer never arrives."""
    cmd = rng.choice(_FISCAL_COMMANDS)
    count = rng.randint(1, 3)
    record.detail = f"command 0x{cmd:02X} x{count}"
    _printer(chain, record.target).sim.lose_answers(cmd, count)


async def fault_paper_out(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    sim = _printer(chain, record.target).sim
    seconds = rng.uniform(2.0, 8.0)
    record.detail = f"for {seconds:.1f}s"
    sim.set_fault("paper_end", True)
    try:
        await asyncio.sleep(seconds)
    finally:
        sim.set_fault("paper_end", False)


async def fault_disk_full(chain: Chain, rng: random.Random, record: FaultRecord) -> None:
    """The agent's disk fills up: its files cannot grow past their present size.

    Done with the kernel's file-size limit on the running agent (RLIMIT_FSIZE; Python
    ignores SIGXFSZ, so a write past it fails with EFBIG, as a full disk fails one with
    ENOSPC): SQLite's own error path, no hook in the agent. Freed again after a while.
    """
    agent = chain.agents[record.target]
    pid = agent.process.pid
    if pid is None:
        return
    sizes = [
        p.stat().st_size
        for p in (agent.database_path, agent.database_path.with_name("agent.db-wal"))
        if p.exists()
    ]
    seconds = rng.uniform(3.0, 10.0)
    record.detail = f"at {max(sizes, default=0)} bytes for {seconds:.1f}s"
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (max(sizes, default=0), resource.RLIM_INFINITY))
    try:
        await asyncio.sleep(seconds)
    finally:
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)


FAULTS: dict[str, FaultFn] = {
    "fiscal_answer_lost": fault_fiscal_answer_lost,
    "paper_out": fault_paper_out,
    "disk_full": fault_disk_full,
    "agent_kill": fault_agent_kill,
    "ingest_kill": fault_ingest_kill,
    "api_kill": fault_api_kill,
    "nats_restart": fault_nats_restart,
    "branch_cut": fault_branch_cut,
}


def _targets(chain: Chain, kind: str) -> list[str]:
    if kind in ("agent_kill", "branch_cut", "disk_full"):
        return sorted(chain.agents)
    if kind in ("fiscal_answer_lost", "paper_out"):
        return sorted(f"{c}/{t}" for c, a in chain.agents.items() for t in a.printers)
    if kind == "ingest_kill":
        return [w.name for w in chain.workers]
    return [kind]


def plan_faults(config: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after start, kind): random moments inside the fault window."""
    kinds = [
        k
        for k in config.fault_kinds
        if k in FAULTS and (config.fiscal_printers or k not in ("fiscal_answer_lost", "paper_out"))
    ]
    window_end = max(config.warmup_s + 1.0, config.duration_s - config.max_cut_s - 3.0)
    if config.faults_per_kind is not None:
        chosen = [k for k in kinds for _ in range(config.faults_per_kind)]
    else:
        total = max(len(kinds), int((window_end - config.warmup_s) / config.mean_fault_gap_s))
        chosen = [kinds[i % len(kinds)] for i in range(total)]
    return sorted((rng.uniform(config.warmup_s, window_end), kind) for kind in chosen)


# --- the run ----------------------------------------------------------------------------


async def _head_office_reader(chain: Chain, stop: asyncio.Event, errors: list[int]) -> None:
    """Head office reading receipts while the API is being killed: failures are counted."""
    async with httpx.AsyncClient(
        base_url=chain.api_url, timeout=5, headers=chain.api_headers
    ) as client:
        while not stop.is_set():
            try:
                response = await client.get("/api/v1/receipts", params={"limit": 5})
                if response.status_code != 200:
                    errors[0] += 1
            except httpx.HTTPError:
                errors[0] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    rng = random.Random(config.seed)
    chain = Chain(config)
    say: Callable[[str], None] = (
        (lambda msg: print(f"[{log_prefix}] {msg}", flush=True))
        if config.verbose
        else (lambda _msg: None)
    )
    faults: list[FaultRecord] = []
    tills: list[Till] = []
    try:
        say(f"seed {config.seed}; starting the chain in {chain.work_dir}")
        await chain.start()
        for code, agent in chain.agents.items():
            for till_id, token in agent.tokens.items():
                tills.append(
                    Till(
                        branch=code,
                        till_id=till_id,
                        token=token,
                        base_url=agent.url,
                        rng=random.Random(rng.getrandbits(64)),
                        interval_s=config.sale_interval_s,
                    )
                )
        clerks: list[Clerk] = []
        for code, agent in chain.agents.items():
            clerks.append(
                Clerk(
                    branch=code,
                    base_url=agent.url,
                    token=f"{code}-manager-secret",
                    peers={
                        other: (a.url, f"{other}-manager-secret")
                        for other, a in chain.agents.items()
                        if other != code
                    },
                    rng=random.Random(rng.getrandbits(64)),
                    interval_s=config.document_interval_s,
                )
            )
        plan = plan_faults(config, rng)
        say(
            f"chain up; {len(tills)} tills selling for {config.duration_s:.0f}s, {len(plan)} faults planned"
        )
        stop_sales, hard_stop, stop_watch = asyncio.Event(), asyncio.Event(), asyncio.Event()
        reader_errors = [0]
        started = time.monotonic()
        till_tasks = [asyncio.create_task(t.run(stop_sales, hard_stop)) for t in tills]
        till_tasks += [asyncio.create_task(c.run(stop_sales, hard_stop)) for c in clerks]
        background = [
            asyncio.create_task(chain.watchdog(stop_watch)),
            asyncio.create_task(_head_office_reader(chain, stop_watch, reader_errors)),
        ]
        locks: dict[str, asyncio.Lock] = {}

        async def inflict(at: float, kind: str) -> None:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            target = rng.choice(_targets(chain, kind))
            # A crash, a full disk: one at a time per agent (a restart frees the disk).
            lock_key = (
                f"agent:{target}" if kind in ("agent_kill", "disk_full") else f"{kind}:{target}"
            )
            async with locks.setdefault(lock_key, asyncio.Lock()):
                record = FaultRecord(kind, target, "", time.monotonic() - started)
                faults.append(record)
                await FAULTS[kind](chain, rng, record)
                record.ended = time.monotonic() - started
                say(
                    f"{record.started:6.1f}s {kind} {target} {record.detail} (back at {record.ended:.1f}s)"
                )

        fault_tasks = [asyncio.create_task(inflict(at, kind)) for at, kind in plan]
        await asyncio.sleep(max(0.0, started + config.duration_s - time.monotonic()))
        results = await asyncio.gather(*fault_tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                chain.incidents.append(f"a fault could not be repaired: {result!r}")
        last_fault_end = max((f.ended for f in faults), default=0.0)
        stop_sales.set()
        # The sale in hand at the end is settled (retried) while everything is up.
        _done, pending = await asyncio.wait(till_tasks, timeout=60)
        hard_stop.set()
        if pending:
            await asyncio.wait(pending, timeout=15)
        load_s = time.monotonic() - started
        say(f"load stopped at {load_s:.1f}s; waiting for central to converge")
        converged_at: float | None = None
        produced = stored = 0
        deadline = time.monotonic() + config.converge_timeout_s
        while time.monotonic() < deadline:
            converged, produced, stored = await chain.progress()
            if converged:
                converged_at = time.monotonic() - started
                break
            await asyncio.sleep(0.25)
        stop_watch.set()
        await asyncio.gather(*background, return_exceptions=True)
        converge_s = (
            None if converged_at is None else max(0.0, converged_at - max(last_fault_end, load_s))
        )
        if converged_at is None:
            chain.incidents.append(
                f"central did not converge within {config.converge_timeout_s}s "
                f"({stored} of {produced} events)"
            )
        # Central settles once more so a late duplicate would show up.
        await asyncio.sleep(1.0)
        assert chain.engine is not None
        agents = {
            code: await asyncio.to_thread(read_agent_books, code, a.database_path)
            for code, a in chain.agents.items()
        }
        central = await read_central_books(chain.engine)
        api_totals = await chain.api_receipt_totals()
        by_branch: dict[str, list[Till]] = {}
        for till in tills:
            by_branch.setdefault(till.branch, []).append(till)
        documents: dict[str, list[ClerkStats]] = {}
        for clerk in clerks:
            for code, stats in clerk.stats.items():
                documents.setdefault(code, []).append(stats)
        verdict = compare(agents, central, by_branch, api_totals, chain.printed(), documents)
        return ChaosReport(
            config=config,
            verdict=verdict,
            faults=faults,
            converge_s=converge_s,
            events_produced=sum(len(a.events) for a in agents.values()),
            events_at_central=sum(len(v) for v in central.events.values()),
            load_s=load_s,
            tills=tills,
            clerks=clerks,
            incidents=chain.incidents,
            reader_errors=reader_errors[0],
        )
    finally:
        await chain.stop()
