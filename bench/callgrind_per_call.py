"""Instructions per one-page call through the public API, counted by
callgrind (wall time on a shared machine is noise; instruction counts are
not):

    python bench/callgrind_per_call.py [--calls N]

For each of ``pin_user_pages_fast`` + ``unpin_user_pages`` and
``pin_user_pages`` + ``unpin_user_pages`` of a present page
(FOLL_LONGTERM | FOLL_WRITE, the calls ``pygup bench`` times), it runs the
same script twice under ``valgrind --tool=callgrind`` -- once making no call,
once making N -- and divides the difference of the two programs' totals by N:
everything one call costs, Python, cffi and C, and nothing of the start-up.
OpenBLAS's worker threads, which spin in the background of a numpy process
and would be counted with the calls, are limited to one.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

CALLS = ("fast", "slow")


def workload(kind: str, calls: int) -> None:
    from pygup.flags import FOLL
    from pygup.tools.bench import machine_for, mapped
    m = machine_for(64)
    p, a = mapped(m, 64)
    mm = p.mm
    call = mm.pin_user_pages_fast if kind == "fast" else mm.pin_user_pages
    unpin = mm.unpin_user_pages
    flags = FOLL.LONGTERM | FOLL.WRITE
    for _ in range(calls):
        ret, pages = call(a, 1, flags)
        unpin(pages)


def program_total(out_file: str) -> int:
    """The PROGRAM TOTALS line of callgrind_annotate's report."""
    txt = subprocess.run(["callgrind_annotate", out_file], check=True, capture_output=True,
                         text=True).stdout
    mt = re.search(r"^\s*([\d,]+)\s.*PROGRAM TOTALS", txt, re.M)
    if not mt:
        raise RuntimeError(f"no PROGRAM TOTALS in callgrind_annotate's report of {out_file}")
    return int(mt.group(1).replace(",", ""))


def counted(kind: str, calls: int, d: str) -> int:
    out = os.path.join(d, f"callgrind.{kind}.{calls}.out")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, __file__, "--workload", kind, "--calls", str(calls)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return program_total(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--workload", choices=CALLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        workload(args.workload, args.calls)
        return 0
    if args.calls < 1:
        ap.error(f"--calls must be at least 1, got {args.calls}")
    print(f"one-page calls through the public API, {args.calls} each, instructions per call:")
    with tempfile.TemporaryDirectory() as d:
        for kind, what in zip(CALLS, ("pin_user_pages_fast + unpin_user_pages",
                                      "pin_user_pages + unpin_user_pages (present)")):
            per_call = (counted(kind, args.calls, d) - counted(kind, 0, d)) / args.calls
            print(f"  {what:<46} {per_call:10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
