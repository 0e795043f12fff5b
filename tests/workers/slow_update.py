"""Run by tests/test_signals.py: the ``lattice-flows`` command line, with every measured update after the
first ``SLOW_AFTER`` (an environment variable) made endless (a Python loop of short sleeps, as a long
trajectory is a Python loop of integrator steps), so that a signal arrives in the middle of an update.

    SLOW_AFTER=12 python tests/workers/slow_update.py run spec.toml --out DIR ...
"""

import os
import sys
import time

from lattice_flows import Simulation
from lattice_flows.cli import main

measure = Simulation.measure
calls = 0


def slow_measure(self, x, *args):
    global calls
    calls += 1
    if calls > int(os.environ["SLOW_AFTER"]):
        while True:
            time.sleep(0.01)
    return measure(self, x, *args)


Simulation.measure = slow_measure

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
