"""``make run`` with moved ports: two of its listeners on one port are refused before
anything starts (it started, then stopped as a whole when the second could not listen)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from central.demo import demo_ports

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_and_documented_ports_are_apart() -> None:
    assert len(demo_ports(8000, 4222, 8101, 21010)) == 12
    assert len(demo_ports(8080, 4333, 8201, 22010)) == 12


@pytest.mark.parametrize(
    ("ports", "words"),
    [
        ((28500, 28522, 28501, 28510), ("28522", "NATS", "B002's display")),
        ((8000, 4222, 8101, 8100), ("8101", "B001's till API", "B001's printer")),
        ((8000, 4222, 8101, 65530), ("65540", "above 65535")),
    ],
)
def test_ports_that_clash_are_named(
    ports: tuple[int, int, int, int], words: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="port") as refused:
        demo_ports(*ports)
    for word in words:
        assert word in str(refused.value)


def test_the_demo_refuses_them_before_it_starts_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKROOM_")}
    env["PYTHONPATH"] = str(ROOT)
    args = ["--data-dir", str(tmp_path / "demo"), "--nats-port", "21022"]
    out = subprocess.run(
        [sys.executable, "-m", "central", "demo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert "port 21022 is both NATS (--nats-port) and B002's display" in out.stderr
    assert out.stdout == ""
    assert not (tmp_path / "demo").exists()
