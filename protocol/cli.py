"""What both command lines (central's and the agent's) do the same way around their
commands; shared here because neither app imports the other."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["run_cli"]


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None) -> None:
    """Run ``main``; a reader that left early (``status | head``) ends it quietly, exit 1,
    instead of with a BrokenPipeError traceback (Python's documented idiom)."""
    try:
        try:
            main(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # Nothing more can be written; the interpreter's own flush at exit must not fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
