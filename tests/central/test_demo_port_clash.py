"""``make run`` with moved ports: two of its listeners on one port are refused before
anything starts (it started, then stopped as a whole when the second could not listen);
the command itself: ``tests/central/test_cli_config.py``."""

from __future__ import annotations

import pytest

from central.demo import demo_ports


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
