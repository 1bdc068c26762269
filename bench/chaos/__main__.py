"""``python -m bench.chaos``: the long fault run; its LAST LINE is one JSON summary.

    python -m bench.chaos --branches 5 --minutes 5 [--seed N] [--database-url URL]

Exit status 0 when every branch's books agree (0 missing, 0 duplicated, no other
difference), 1 otherwise. Logs of every process stay in ``--work-dir`` (a temporary
folder, removed after a passing run unless ``--keep``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.chaos.chain import FAULT_KINDS, ChaosConfig, run_chaos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--branches", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=5.0, help="load and faults last this long")
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    parser.add_argument("--tills", type=int, default=2, help="tills per branch")
    parser.add_argument("--ingest-workers", type=int, default=2)
    parser.add_argument("--sale-interval", type=float, default=0.5, help="seconds per till")
    parser.add_argument(
        "--database-url", default="", help="central's database (default: SQLite in work dir)"
    )
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help="kinds to inflict")
    parser.add_argument("--fault-gap", type=float, default=5.0, help="mean seconds between faults")
    parser.add_argument("--max-cut", type=float, default=None, help="longest branch cut, seconds")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work dir after a pass")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="backroom-chaos-"))
    duration = args.minutes * 60
    # A cut of minutes in a long run; never more than a third of the run.
    max_cut = args.max_cut if args.max_cut is not None else min(120.0, duration / 3)
    config = ChaosConfig(
        work_dir=work_dir,
        branches=args.branches,
        tills_per_branch=args.tills,
        ingest_workers=args.ingest_workers,
        duration_s=duration,
        seed=seed,
        database_url=args.database_url,
        sale_interval_s=args.sale_interval,
        fault_kinds=tuple(k.strip() for k in args.faults.split(",") if k.strip()),
        mean_fault_gap_s=args.fault_gap,
        min_cut_s=min(10.0, max_cut),
        max_cut_s=max_cut,
        converge_timeout_s=300.0,
        verbose=True,
    )
    print(f"seed {seed} (re-run: python -m bench.chaos --seed {seed} ...)", flush=True)
    report = asyncio.run(run_chaos(config))
    summary = report.summary()
    for problem in summary["first_problems"]:
        print(f"PROBLEM: {problem}", flush=True)
    for kind, count in summary["faults"].items():
        print(f"faults {kind}: {count}")
    print(
        f"events produced {summary['events_produced']}, at central {summary['events_at_central']}, "
        f"missing {summary['missing']}, duplicated {summary['duplicated']}, "
        f"converged {summary['converge_s']} s after the last fault"
    )
    if report.ok and not args.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        summary["work_dir"] = str(work_dir)
    print(json.dumps(summary), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
