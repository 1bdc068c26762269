"""The stock commands' SKU=... lines are checked by the CLI itself: a line the agent
would refuse is one line on stderr, exit 2, and nothing is sent (before, a stocktake
count with a cost, ``SKU=5@70``, went to the agent and came back a 422)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_against_listener(
    tmp_path: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """``python -m branch_agent ARGS`` with the agent's port held by a plain listener
    on 127.0.0.1: how many connections the command opened tells whether it sent."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\nbranch = "B1"\ndata_dir = "{tmp_path / "data"}"\n'
            f'http_port = {port}\nmanager_token = "m"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
        env["PYTHONPATH"] = str(ROOT)
        process = subprocess.Popen(
            [sys.executable, "-m", "branch_agent", "--config", str(config), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        connections = 0
        while process.poll() is None:
            try:
                accepted, _ = listener.accept()
            except TimeoutError:
                continue
            connections += 1
            accepted.close()  # no answer: the command fails on its own
        stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(
        process.args, process.returncode, stdout, stderr
    ), connections


@pytest.mark.parametrize(
    ("args", "named"),
    [
        # A count takes no cost: the agent answered 422 after the CLI sent it.
        (("stocktake", "count", "ST-1", "A", "MILK=5@70"), "'MILK=5@70': a count takes no cost"),
        (("stocktake", "count", "ST-1", "A", "MILK=5,5"), "bad quantity '5,5'"),
        (("stocktake", "count", "ST-1", "A", "MILK"), "bad line 'MILK': SKU=COUNTED"),
        (("goods-receipt", "MILK=-3@70"), "bad quantity '-3'"),
        (("goods-receipt", "MILK=1.2345@70"), "bad quantity '1.2345'"),
        # An "@" with nothing after it was sent without a cost.
        (("goods-receipt", "MILK=5@"), "bad unit cost '' in 'MILK=5@'"),
        (("goods-receipt", "MILK=5@0.70"), "whole number of cents"),
        # stock post FILE: a file it cannot read or that holds no document was a traceback.
        (("post", "missing.json"), "cannot read 'missing.json': [Errno 2]"),
        (("post", "text.json"), "'text.json' is not JSON: Expecting value"),
        (("post", "list.json"), "'list.json' holds no JSON object"),
    ],
)
def test_a_bad_stock_line_is_refused_before_anything_is_sent(
    tmp_path: Path, args: tuple[str, ...], named: str
) -> None:
    (tmp_path / "text.json").write_text("goods_receipt MILK=5@70\n")
    (tmp_path / "list.json").write_text('[{"sku": "MILK", "quantity": "5"}]')
    out, connections = _run_against_listener(tmp_path, "stock", *args)
    assert out.returncode == 2, out.stderr
    assert named in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert connections == 0
