"""Run by tests/test_rundir_safety.py, two at once: open the run folders ROOT/0 .. ROOT/N-1 each at an agreed
instant (START + i * GAP seconds, wall clock), so that both processes race for every folder; print one line
per folder, ``i opened`` or ``i refused: <message>``, and hold each opened folder until the next instant.

    python tests/workers/open_together.py ROOT N START GAP BETA
"""

import json
import sys
import time
from pathlib import Path

from lattice_flows.rundir import RunFolder, RunFolderError


def main(root: str, n: str, start: str, gap: str, beta: str) -> None:
    spec = {"action": {"name": "u1_wilson", "beta": float(beta)}}
    held = None
    for i in range(int(n)):
        at = float(start) + i * float(gap)
        while time.time() < at:
            pass  # spin: both processes leave the loop within microseconds of each other
        if held is not None and hasattr(held, "release"):
            held.release()
        try:
            held = RunFolder.open(Path(root) / str(i), spec, resume=False)
            print(f"{i} opened", flush=True)
        except RunFolderError as exc:
            held = None
            print(f"{i} refused: {exc}", flush=True)
    time.sleep(float(gap))
    print(json.dumps("done"), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
