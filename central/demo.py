"""``make run``: the whole chain on one machine, on embedded defaults.

Starts a nats-server (from the wheel), central on SQLite (API and an ingest
worker) seeded with the demo catalog (``python -m central seed-demo``: products,
format ``demo``, chain prices), two demo branches in that format with their agents
and a till simulator each, as child processes. Prints where to look; Ctrl-C stops every process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from central.demo_seed import DEMO_FORMAT
from central.embedded_nats import EmbeddedNats, NatsKeeper
from central.sync.nats_auth import NatsIssuer

__all__ = ["run_demo"]

DEMO_BRANCHES = (
    ("B001", "Downtown", "Europe/Berlin"),
    ("B002", "Riverside", "Europe/Berlin"),
)


DEVICE_KINDS = ("fiscal", "printer", "display", "scale")


def demo_ports(
    http_port: int, nats_port: int, agent_base_port: int, device_base_port: int
) -> dict[int, str]:
    """Every port the demo listens on, with what listens there; a ValueError naming both
    when two fall on one port (``--device-base-port 28510`` puts B002's display on
    28522: with ``--nats-port 28522`` the demo started, then stopped as a whole at the
    display) or one is above 65535."""
    wanted = [(http_port, "central's API (--port)"), (nats_port, "NATS (--nats-port)")]
    for n, (code, *_) in enumerate(DEMO_BRANCHES):
        wanted.append((agent_base_port + n, f"{code}'s till API (--agent-base-port + {n})"))
        for offset, kind in enumerate(DEVICE_KINDS):
            plus = 10 * n + offset
            wanted.append(
                (device_base_port + plus, f"{code}'s {kind} (--device-base-port + {plus})")
            )
    ports: dict[int, str] = {}
    for port, what in wanted:
        if port > 65535:
            raise ValueError(f"port {port} of {what} is above 65535: choose lower ports")
        if port in ports:
            raise ValueError(
                f"port {port} is both {ports[port]} and {what}: choose ports apart"
                " (each branch's device simulators take 4 ports, the next branch's"
                " 10 higher)"
            )
        ports[port] = what
    return ports


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def _write_settings(path: Path, env: dict[str, str], http_port: int) -> None:
    """The demo's settings as a TOML file: `python -m central branches add|revoke` and
    `users add` run from the project root read it (README "Security")."""
    lines = ["[central]"]
    for key, value in env.items():
        if key != "BACKROOM_HTTP_PORT":
            lines.append(f'{key.removeprefix("BACKROOM_").lower()} = "{value}"')
    lines.append(f"http_port = {http_port}")
    path.write_text("\n".join(lines) + "\n")


def _till_token(code: str) -> str:
    return f"{code}-till-1-secret"


def _manager_token(code: str) -> str:
    return f"{code}-manager-secret"


def _admin_token(python: str, env: dict[str, str]) -> str:
    """A token of the demo's admin user (made on the first run, another one later)."""
    for args in (["add", "demo-admin", "--role", "admin"], ["token", "demo-admin"]):
        out = subprocess.run(
            [python, "-m", "central", "users", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0:
            token: str = json.loads(out.stdout.strip().splitlines()[-1])["token"]
            return token
    return ""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(
    data_dir: Path,
    *,
    http_port: int = 8000,
    nats_port: int = 4222,
    agent_base_port: int = 8101,
    device_base_port: int = 21010,
) -> int:
    """The chain on one machine. Ports: central ``http_port``, NATS ``nats_port``, the
    n-th branch's till API ``agent_base_port + n`` and its four device simulators
    ``device_base_port + 10 n`` onwards (defaults: 8000, 4222, 8101, 21010)."""
    try:
        demo_ports(http_port, nats_port, agent_base_port, device_base_port)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    # Ctrl-C, and also SIGTERM (a service manager, `kill`), or SIGINT even when the
    # shell started us with it ignored: every child is stopped in the finally below.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    processes: list[subprocess.Popen[bytes]] = []
    agent_ports = {code: agent_base_port + n for n, (code, *_) in enumerate(DEMO_BRANCHES)}
    # NATS runs with central's JWT auth: each agent gets only its own branch's creds.
    issuer = NatsIssuer.load_or_create(data_dir / "central" / "nats-issuer")
    nats = EmbeddedNats(
        data_dir / "nats",
        port=nats_port,
        extra_config=issuer.server_config(data_dir / "nats" / "resolver"),
    )
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log_file = (logs / f"{name}.log").open("ab")
        processes.append(
            subprocess.Popen(
                [python, *args],
                env={**os.environ, **(env or {})},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    central_env = {
        "BACKROOM_DATABASE_URL": f"sqlite+aiosqlite:///{data_dir / 'central' / 'central.db'}",
        "BACKROOM_DATA_DIR": str(data_dir / "central"),
        "BACKROOM_HTTP_PORT": str(http_port),
        "BACKROOM_NATS_CREDS": str(issuer.central_creds_file().resolve()),
    }
    try:
        nats.start()
        central_env["BACKROOM_NATS_URL"] = nats.url
        _write_settings(data_dir / "central.toml", central_env, http_port)
        central_run = {**os.environ, **central_env, "BACKROOM_CENTRAL_CONFIG": ""}
        subprocess.run(
            [python, "-m", "central", "db", "upgrade"],
            env={**os.environ, **central_env},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # Head office's demo catalog, format and prices (the same products the agents
        # start with); demo branches registered by an older run without a format are
        # moved into it. Idempotent: a later run creates only what is missing.
        seeded = subprocess.run(
            [
                python,
                "-m",
                "central",
                "seed-demo",
                *(arg for code, *_ in DEMO_BRANCHES for arg in ("--branch", code)),
            ],
            env=central_run,
            capture_output=True,
            text=True,
            check=False,
        )
        if seeded.returncode != 0:
            print(
                f"seeding the demo catalog failed:\n{seeded.stdout}{seeded.stderr}",
                file=sys.stderr,
            )
            return 1
        creds: dict[str, str] = {}
        for code, name, tz in DEMO_BRANCHES:
            out = subprocess.run(
                [
                    python,
                    "-m",
                    "central",
                    "branches",
                    "add",
                    code,
                    "--name",
                    name,
                    "--timezone",
                    tz,
                    "--format",
                    DEMO_FORMAT,
                ],
                env=central_run,
                capture_output=True,
                text=True,
                check=False,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
            # Registered on an earlier run: its creds file is still there.
            creds[code] = result.get("creds_file") or str(
                (issuer.directory / "branches" / f"{code}.creds").resolve()
            )
        admin = _admin_token(python, central_run)
        spawn("central", ["-m", "central", "serve"], central_env)
        _wait_http(f"http://127.0.0.1:{http_port}/health")
        for n, (code, name, tz) in enumerate(DEMO_BRANCHES):
            port = agent_ports[code]
            # Till T1's devices: simulators over TCP, as a serial-over-TCP bridge would be.
            devices = {}
            for offset, kind in enumerate(DEVICE_KINDS):
                device_port = device_base_port + 10 * n + offset
                spawn(
                    f"device-{code}-{kind}",
                    ["-m", "devices", "simulate", kind, "--listen", f"127.0.0.1:{device_port}"],
                )
                devices[kind] = f"socket://127.0.0.1:{device_port}"
            config = data_dir / f"agent-{code}.toml"
            config.write_text(
                "[agent]\n"
                f'branch = "{code}"\nname = "{name}"\ntimezone = "{tz}"\n'
                f'data_dir = "{data_dir / ("agent-" + code)}"\n'
                f'nats_url = "{nats.url}"\nnats_creds = "{creds[code]}"\n'
                f"http_port = {port}\ndemo_catalog = true\n"
                f'manager_token = "{_manager_token(code)}"\n\n'
                f'[[agent.tills]]\nid = "T1"\ntoken = "{_till_token(code)}"\n'
                f'fiscal_printer = {{ port = "{devices["fiscal"]}", protocol = "datecs-x" }}\n'
                f'receipt_printer = {{ port = "{devices["printer"]}", protocol = "escpos" }}\n'
                f'display = {{ port = "{devices["display"]}" }}\n'
                f'scale = {{ port = "{devices["scale"]}", protocol = "toledo-8217" }}\n'
            )
            spawn(f"agent-{code}", ["-m", "branch_agent", "--config", str(config), "run"])
        for code, port in agent_ports.items():
            _wait_http(f"http://127.0.0.1:{port}/health")
            spawn(
                f"till-{code}",
                [
                    "-m",
                    "branch_agent",
                    "till-sim",
                    "--url",
                    f"http://127.0.0.1:{port}",
                    "--token",
                    _till_token(code),
                    "--interval",
                    "3",
                ],
            )
        print(
            json.dumps(
                {
                    "central_api": f"http://127.0.0.1:{http_port}",
                    "openapi_docs": f"http://127.0.0.1:{http_port}/docs",
                    "receipts": f"http://127.0.0.1:{http_port}/api/v1/receipts",
                    "nats": nats.url,
                    "agents": {
                        code: f"http://127.0.0.1:{port}" for code, port in agent_ports.items()
                    },
                    "data_dir": str(data_dir),
                    "admin_token": admin,
                    # Central's demo catalog: `GET /api/v1/products`, `GET /api/v1/prices`.
                    "demo_format": DEMO_FORMAT,
                    # The demo agents' till API tokens (also in agent-<code>.toml).
                    "agent_tokens": {
                        code: {"till_T1": _till_token(code), "manager": _manager_token(code)}
                        for code, _n, _t in DEMO_BRANCHES
                    },
                    "settings_file": str(data_dir / "central.toml"),
                    "logs": str(logs),
                },
                indent=2,
            )
        )
        print("Backroom is running. Ctrl-C stops every process it started.", flush=True)

        def refresh(server: EmbeddedNats) -> None:
            # Revocations made meanwhile: the newest account JWT preloaded.
            server.extra_config = issuer.server_config(data_dir / "nats" / "resolver")

        # The nats-server is this process's own: started again when it dies (killed,
        # crashed), on its port and store; the agents and central reconnect by themselves.
        keeper = NatsKeeper(nats, lambda line: print(line, file=sys.stderr, flush=True), refresh)
        while all(p.poll() is None for p in processes):
            keeper.check()
            time.sleep(0.5)
        failed = [p.args for p in processes if p.poll() is not None]
        print(f"a process stopped: {failed}; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C or SIGTERM (a service manager, an impatient person) must not
        # cut the clean-up short and leave processes running.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        nats.stop()
