"""Instructions per page of the GUP-fast pin + unpin loop, counted by
callgrind (wall time on a shared machine is noise; instruction counts are
not):

    python bench/callgrind_gup_fast.py [--pages N] [--reps R]

It runs itself under ``valgrind --tool=callgrind`` with collection switched
on only inside ``pg_gup_fast`` and ``pg_gup_put_pages`` (the C entry points
that ``pin_user_pages_fast`` and ``unpin_user_pages`` call), then prints the
instructions per page of each, from the inclusive cost of those two
functions.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

ENTRIES = ("pg_gup_fast", "pg_gup_put_pages")


def workload(pages: int, reps: int) -> None:
    import numpy as np
    from pygup.tools.bench import LT_W, machine_for, mapped
    m = machine_for(pages)
    p, a = mapped(m, pages)
    core, cpu = m._core, m.current_cpu()
    buf = np.empty(pages, np.uint64)
    for _ in range(reps):
        got = core.gup_fast(cpu, p.mm.id, a, pages, LT_W, 1, buf)
        assert len(got) == pages
        core.gup_put_pages(got, True)


def inclusive(out_file: str) -> dict[str, int]:
    """Inclusive Ir of each entry point, from callgrind_annotate."""
    txt = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out_file],
                         check=True, capture_output=True, text=True).stdout
    found: dict[str, int] = {}
    for line in txt.splitlines():
        mt = re.match(r"\s*([\d,]+)\s*\(.*?\)\s+\S*?:?(\w+)\s", line + " ") or \
            re.match(r"\s*([\d,]+)\s+\S*?:?(\w+)\s", line + " ")
        if mt and mt.group(2) in ENTRIES and mt.group(2) not in found:
            found[mt.group(2)] = int(mt.group(1).replace(",", ""))
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=1 << 14)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--workload", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.workload:
        workload(args.pages, args.reps)
        return 0
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "callgrind.out")
        toggles = [f"--toggle-collect={e}" for e in ENTRIES]
        subprocess.run(["valgrind", "--tool=callgrind", "--collect-atstart=no", *toggles,
                        f"--callgrind-out-file={out}", sys.executable, __file__,
                        "--workload", "--pages", str(args.pages), "--reps", str(args.reps)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cost = inclusive(out)
        missing = [e for e in ENTRIES if e not in cost]
        if missing:
            print(f"callgrind found no cost for {missing}", file=sys.stderr)
            return 1
        n = args.pages * args.reps
        total = sum(cost.values())
        print(f"GUP-fast pin + unpin, {args.pages} pages x {args.reps} reps, instructions per page:")
        for e in ENTRIES:
            print(f"  {e:<20} {cost[e] / n:8.1f}")
        print(f"  {'total':<20} {total / n:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
