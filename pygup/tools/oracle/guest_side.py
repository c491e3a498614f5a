"""The oracle on another kernel: the host side of every cell run inside a
guest booted with ``guest`` (virtme-ng under qemu), its outcomes carried
back as JSON, and compared on this machine with the pygup side under the
guest kernel's preset (``pygup oracle --kernel 6.1|6.12|host|PATH``).

Inside the guest runs ``python -m pygup.tools.oracle.guest_side
--host-side-json OUT``: the same ``HostEnv`` code as the host oracle, from
this checkout (the guest sees the host's file system, read-only, so the
compiled ``pygup._core`` is the same).  The guest's working directory is a
fresh loop-mounted ext4 (the host's file system reaches the guest over 9p,
which has no pygup preset and cannot map files MAP_SHARED).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from pygup.tools.oracle.cells import BACKINGS, Cell, Outcome, enumerate_cells
from pygup.tools.oracle.scenarios import SCENARIOS, Scenario

FORMAT = 2                    # version of the JSON a guest writes
WORKDIR_FS = "ext4"           # the guest's working directory's file system
# kernel command line words for the guest: secretmem is off by default
# before 6.5 ("mm/secretmem: make it on by default")
GUEST_APPEND = ("secretmem.enable=1",)
GUEST_MODULES = ("loop", "ext4", "xfs", "btrfs")


# ---------------------------------------------------------------------------
# inside the guest: record the host side

def record_host_side(backings: Optional[Iterable[str]] = None,
                     progress: Optional[Callable[[str], None]] = None) -> dict:
    """Every cell of ``backings`` run by ``HostEnv`` on the running kernel:
    a JSON-able dict of outcomes, skips and descriptions."""
    from pygup.tools.oracle.host import HostEnv
    cells = enumerate_cells(backings)
    names = sorted({c.backing for c in cells}, key=list(BACKINGS).index)
    outcomes: dict[str, Optional[list]] = {}
    t0 = time.monotonic()
    with HostEnv(names) as env:
        presets = {b: env.preset(b) for b in names if b not in env.skipped}
        for cell in cells:
            if cell.backing in env.skipped:
                continue
            h = env.run(cell)
            outcomes[cell.key] = None if h is None else [h.stage, h.ret]
        scenarios = {name: env.run_scenario(sc) for name, sc in SCENARIOS.items()}
        if progress:
            progress(f"{len(outcomes)} cells, {len(scenarios)} scenarios in "
                     f"{time.monotonic() - t0:.1f}s")
        return {"format": FORMAT, "release": os.uname().release, "backings": names,
                "presets": presets, "skipped": dict(env.skipped),
                "method_skipped": dict(env.method_skipped), "describe": env.describe(),
                "outcomes": outcomes, "scenarios": scenarios,
                "seconds": time.monotonic() - t0}


@contextlib.contextmanager
def _guest_workdir(fstype: str):
    """chdir into a fresh loop-mounted ``fstype`` for the duration."""
    from pygup.tools.oracle.host import loop_mount
    old = os.getcwd()
    with contextlib.ExitStack() as st:
        tmp = tempfile.mkdtemp(prefix="pygup-guest-")
        d = loop_mount(fstype, tmp, os.path.join(tmp, "workdir"), st)
        os.chdir(d)
        st.callback(os.chdir, old)
        yield d


def host_side_main(argv: Optional[list[str]] = None) -> int:
    """``python -m pygup.tools.oracle.guest_side --host-side-json OUT``."""
    ap = argparse.ArgumentParser(prog="python -m pygup.tools.oracle.guest_side")
    ap.add_argument("--host-side-json", required=True, metavar="OUT")
    ap.add_argument("--only", default=None)
    ap.add_argument("--workdir-fs", default=None,
                    help="run in a fresh loop-mounted file system of this type")
    ns = ap.parse_args(argv)
    backings = [b.strip() for b in ns.only.split(",") if b.strip()] if ns.only else None
    for mod in GUEST_MODULES if ns.workdir_fs else ():
        # the guest's modules are not loaded on demand by everything (losetup)
        subprocess.run(["modprobe", mod], capture_output=True, timeout=60)
    with (_guest_workdir(ns.workdir_fs) if ns.workdir_fs else contextlib.nullcontext()):
        rec = record_host_side(backings, progress=lambda s: print(s, file=sys.stderr))
    tmp = ns.host_side_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, ns.host_side_json)
    return 0


# ---------------------------------------------------------------------------
# on this machine: replay the record as the host runner

class RecordedHost:
    """A ``HostRunner`` answering from a record made by ``record_host_side``."""

    def __init__(self, record: dict) -> None:
        if record.get("format") != FORMAT:
            raise ValueError(f"host-side record has format {record.get('format')!r}, "
                             f"want {FORMAT}")
        self.record = record
        self.release: str = record["release"]
        self.skipped: dict[str, str] = dict(record["skipped"])
        self.method_skipped: dict[str, str] = dict(record["method_skipped"])
        self._outcomes: dict[str, Optional[list]] = record["outcomes"]

    def __enter__(self) -> "RecordedHost":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def preset(self, backing: str) -> str:
        return self.record["presets"].get(backing, "ext4")

    def describe(self) -> dict[str, str]:
        return dict(self.record["describe"])

    def run(self, cell: Cell) -> Optional[Outcome]:
        if cell.key not in self._outcomes:
            raise KeyError(f"the guest recorded no outcome for {cell.key}")
        got = self._outcomes[cell.key]
        return None if got is None else Outcome(got[0], int(got[1]))

    def run_scenario(self, scenario: Scenario) -> Optional[list]:
        return self.record.get("scenarios", {}).get(scenario.name)


def checkout_root() -> Path:
    """The directory holding this checkout's ``pygup`` package."""
    # this file is <root>/pygup/tools/oracle/guest_side.py
    return Path(__file__).resolve().parents[3]


def record_in_guest(kernel: str, backings: Optional[Iterable[str]] = None,
                    timeout: float = 900.0, cache: Optional[Path] = None,
                    accel: str = "auto"):
    """Boot ``kernel`` ("6.1", "6.12", a release, a package, a vmlinuz
    path) and record the host side there: (record, GuestResult,
    KernelImage).  Set-up problems raise ``GuestSetupError`` first."""
    from pygup.tools.oracle import guest
    missing = guest.check_setup()
    if missing:
        raise GuestSetupError("cannot boot a guest kernel:\n  " + "\n  ".join(missing))
    try:
        image = guest.fetch_kernel(kernel, cache)
    except guest.KernelFetchError as e:
        raise GuestSetupError(f"cannot get kernel {kernel!r}: {e}") from None
    names = list(backings) if backings is not None else None
    if names is not None:
        enumerate_cells(names)                     # unknown backing: ValueError now
    with tempfile.TemporaryDirectory(prefix="pygup-share-") as share:
        out = os.path.join(share, "host-side.json")
        argv = [sys.executable, "-m", "pygup.tools.oracle.guest_side",
                "--host-side-json", out, "--workdir-fs", WORKDIR_FS]
        if names is not None:
            argv += ["--only", ",".join(names)]
        env = {"PYTHONPATH": str(checkout_root()), "PYTHONDONTWRITEBYTECODE": "1"}
        res = guest.run_in_guest(image, argv, Path(share), timeout, memory="2G",
                                 append=GUEST_APPEND, accel=accel, env=env)
        if res.rc != 0 or not os.path.exists(out):
            raise guest.GuestError(
                f"the probe in guest {res.kernel_release} exited {res.rc}:\n"
                + (res.stderr.strip()[-3000:] or res.stdout.strip()[-3000:]))
        with open(out) as f:
            record = json.load(f)
    return record, res, image


class GuestSetupError(RuntimeError):
    """What this machine lacks to boot a guest (packages, root, a kernel)."""


if __name__ == "__main__":
    sys.exit(host_side_main())
