"""``python -m devices`` / ``backroom-devices``: the technician's CLI (see devices.cli)."""

from __future__ import annotations

from devices.cli import run

__all__ = ["main"]


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()
