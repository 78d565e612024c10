"""Start-up time of the ctstore command line (issue 17 §4; target ≤ 0.5 s for ``--help`` and ``ls``).

    python benchmarks/startup.py            # 7 runs of each command, median and best
    python benchmarks/startup.py --runs 15

Each command runs in a fresh interpreter (``python -m ctstore.cli ...``, not the
``ctstore`` console script, whose launcher a pyenv shim can slow by 0.2 s); the
bare interpreter (``python -c pass``) is timed the same way, so the figure that
is ctstore's own is the difference. It also prints which heavy libraries each
command imported and the machine's load average, since the machines are shared.
A benchmark, not a test: ``tests/test_cli.py`` checks the structure (no heavy
import) instead of a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "dask", "zarr", "pyarrow", "scipy", "numpy")
TARGET_SECONDS = 0.5


def wall(argv: list[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` fresh processes running ``argv``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CTSTORE_NO_PROGRESS": "1"}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return times


def imported(args: list[str], ws: str) -> list[str]:
    """The heavy libraries ``ctstore ARGS`` has imported by the time it returns."""
    code = ("import sys\nfrom ctstore.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in %r if m in sys.modules), file=sys.stderr)" % (args, HEAVY))
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stderr.strip().splitlines()[-1].replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    ws = tempfile.mkdtemp(prefix="ctstore-startup-")
    commands = {"--help": ["--help"], "--version": ["--version"], "ls": ["ls", "-w", ws],
                "count --help": ["count", "--help"]}
    base = wall([sys.executable, "-c", "pass"], runs)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores; "
          f"python -c pass: median {statistics.median(base):.3f} s, best {min(base):.3f} s")
    for label, args in commands.items():
        times = wall([sys.executable, "-m", "ctstore.cli", *args], runs)
        median = statistics.median(times)
        verdict = "" if label == "count --help" else (" (target ≤ %.1f s: %s)" % (
            TARGET_SECONDS, "met" if median <= TARGET_SECONDS else "MISSED"))
        print(f"ctstore {label:<13} median {median:.3f} s, best {min(times):.3f} s, ctstore's own "
              f"{median - statistics.median(base):+.3f} s; imports {imported(args, ws) or 'no heavy library'}"
              f"{verdict}")


if __name__ == "__main__":
    main()
