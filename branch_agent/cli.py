"""``python -m branch_agent``: run the agent, and a technician's view of it."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from branch_agent.settings import load_settings

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m branch_agent", description=__doc__)
    parser.add_argument("--config", help="agent TOML file (section [agent])")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the till API and sync until stopped")
    sub.add_parser("db-upgrade", help="migrate the local database")
    sim = sub.add_parser("till-sim", help="simulate a till posting sales to an agent")
    sim.add_argument(
        "--url", required=True, help="the agent's till API, e.g. http://127.0.0.1:8101"
    )
    sim.add_argument("--token", required=True)
    sim.add_argument("--interval", type=float, default=3.0, help="seconds between sales")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command == "till-sim":
        from branch_agent.till_sim import TillSimulator

        stop = asyncio.Event()
        try:
            asyncio.run(TillSimulator(args.url, args.token).run(args.interval, stop))
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    settings = load_settings(args.config)
    if args.command == "run":
        from branch_agent.agent import Agent

        asyncio.run(Agent(settings).serve())
    elif args.command == "db-upgrade":
        from branch_agent.db import upgrade

        asyncio.run(upgrade(settings.database_path))
        print(json.dumps({"database": str(settings.database_path), "upgraded": True}))
    sys.exit(0)
