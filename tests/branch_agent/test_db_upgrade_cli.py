"""``python -m branch_agent db-upgrade`` says what it did: the revisions the local
database was at and is at, and ``"upgraded": false`` when it was current already."""

from __future__ import annotations

import json
from pathlib import Path

from tests.branch_agent.test_cli_config import GOOD, _agent


def test_db_upgrade_says_whether_it_upgraded(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(GOOD.format(data=tmp_path / "data"))
    first = _agent(tmp_path, str(config), "db-upgrade")
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    assert (shown["upgraded"], shown["from"]) == (True, "base")
    head = shown["upgraded_to"]
    assert head
    again = _agent(tmp_path, str(config), "db-upgrade")
    assert again.returncode == 0, again.stderr
    # Before: "upgraded": true on a database already at the newest schema.
    assert json.loads(again.stdout) == {
        "database": shown["database"],
        "upgraded": False,
        "from": head,
        "upgraded_to": head,
    }
