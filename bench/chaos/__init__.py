"""The fault harness: the whole chain as real processes, faults at random moments, and a
branch-by-branch comparison of every agent's books with central's.

``python -m bench.chaos --branches 5 --minutes 5 [--seed N]`` runs it at length;
``tests/faults/test_chaos_ci.py`` runs a CI-sized version in ``make test``.
"""

from bench.chaos.chain import FAULT_KINDS, Chain, ChaosConfig, ChaosReport, run_chaos

__all__ = ["FAULT_KINDS", "Chain", "ChaosConfig", "ChaosReport", "run_chaos"]
