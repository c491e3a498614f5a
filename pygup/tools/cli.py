"""The ``pygup`` command.

One pair of functions per subcommand: ``add_NAME(sub)`` declares it,
``cmd_NAME(args)`` runs it and returns the exit status.  Exit statuses:
0 allowed / clean, 1 refused / a violation found, 2 a usage error (argparse's
own), 3 an internal error (``fuzz``).
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import threading
from typing import Callable, Optional

from pygup.flags import FOLL, MADV, MAP, MREMAP, PROT
from pygup.kernel.fs import PRESETS
from pygup.machine import Machine
from pygup.tools.timeline import Story

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def _version() -> str:
    """The installed distribution's version (the package metadata)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pygup")
    except PackageNotFoundError:      # a source tree that was never installed
        return "unknown"


def _say(out: Callable[[str], None], step: str, detail: str = "") -> None:
    out(f"  {step:<58} {detail}".rstrip())


def _policies() -> list[str]:
    from pygup.canpin import policy_names
    return policy_names()


# ---------------------------------------------------------------------------
# world

def world(out: Callable[[str], None] = print, fs_name: str = "ext4") -> dict:
    """The world GUP lives in: write-notify on a MAP_SHARED file mapping.
    Each line says what happened on this file system, nothing more.
    Returns the observations (the tests check them)."""
    m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    fs = m.mount(fs_name)
    f = fs.create("data", 4096)
    p = m.spawn()
    addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    vma = p.mm.find_vma(addr)
    from pygup.kernel.vma import vma_needs_dirty_tracking, vma_wants_writenotify
    obs: dict = {"fs": fs_name, "needs_dirty_tracking": vma_needs_dirty_tracking(vma),
                 "wants_writenotify": vma_wants_writenotify(vma)}
    out(f"pygup world: a MAP_SHARED mapping of {fs.name}:data at {addr:#x}  ({m!r})")
    _say(out, "vma_needs_dirty_tracking / vma_wants_writenotify",
         f"{obs['needs_dirty_tracking']} / {obs['wants_writenotify']}")

    p.write(addr, 0x1111)
    pte, mk = p.mm.pte(addr), fs.stats()["page_mkwrite"]
    folio = m.folio(pte.pfn)
    obs["first_write"] = (mk, folio.dirty, pte.write)
    _say(out, "1. user write 0x1111: fault -> " + ("page_mkwrite -> dirty" if mk
                                                    else "no page_mkwrite; folio dirty"),
         f"page_mkwrite={mk} dirty={folio.dirty} pte.write={pte.write}")

    written = f.writeback()
    pte = p.mm.pte(addr)
    folio = m.folio(pte.pfn)
    obs["writeback"] = (written, folio.dirty, pte.write, f.disk(0))
    if written:
        what = "2. writeback: folio_mkclean " + ("write-protects" if not pte.write
                                                 else "leaves the PTE writable") \
            + ", disk updated"
    else:
        what = "2. writeback: nothing written (no backing store)"
    _say(out, what, f"written={written} dirty={folio.dirty} pte.write={pte.write} "
         f"disk={f.disk(0):#x}")

    p.write(addr, 0x2222)
    pte = p.mm.pte(addr)
    folio = m.folio(pte.pfn)
    mk2 = fs.stats()["page_mkwrite"]
    obs["second_write"] = (mk2, folio.dirty, pte.write)
    _say(out, "3. user write 0x2222: " + ("write-protect fault notifies again" if mk2 > mk
                                          else "no fault, no notification"),
         f"page_mkwrite={mk2} dirty={folio.dirty} pte.write={pte.write}")

    m.writeback()
    obs["final_disk"] = f.disk(0)
    obs["warnings"] = len(fs.warnings)
    if fs.fstype.writeback:
        last = "4. sync: " + ("the file system saw every write" if f.disk(0) == 0x2222
                              else "the disk is behind")
    else:
        last = "4. sync: nothing to write back (memory is the only copy)"
    _say(out, last, f"disk={f.disk(0):#x} warnings={len(fs.warnings)}")
    if obs["needs_dirty_tracking"]:
        out("  A GUP pin writes through the kernel's direct mapping instead, where none of")
        out("  this happens: that is what Linux 6.5 refuses to long-term pin")
        out("  (docs/kernel-rules.md §7).")
    else:
        out(f"  {fs.name} does not track dirty pages: a long-term writable pin is allowed.")
    p.exit()
    m.check()
    return obs


def pin_story(out: Callable[[str], None] = print) -> dict:
    """A long-term pin across MADV_DONTNEED and mremap: the pin holder
    keeps its page, the mapping moves on.  Returns the observations."""
    m = Machine(memory="64MiB", movable="0MiB", cpus=2)
    p = m.spawn()
    a = p.mmap(2 * 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    pages = p.pin(a, 4096, FOLL.WRITE | FOLL.LONGTERM)     # an RDMA MR, say
    pfn = pages[0]
    out(f"pygup world --story pin: a long-term pin of the anon page at {a:#x} (frame {pfn:#x})")
    obs: dict = {}

    # a neighbour right above leaves no room to grow in place: mremap moves
    p.mmap(4096, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED, addr=a + 2 * 4096)
    b = p.mremap(a, 2 * 4096, 4 * 4096, MREMAP.MAYMOVE)
    obs["mremap"] = (b != a, p.mm.pte(b).pfn == pfn, m.folio(pfn).refcount)
    _say(out, f"1. mremap grows and moves it to {b:#x}: page tables move",
         f"same frame={p.mm.pte(b).pfn == pfn} refcount={m.folio(pfn).refcount}")
    pages.write(0, 0x2222)
    obs["pin_write_seen"] = p.read(b)
    _say(out, "2. the device writes 0x2222 through the pin", f"read at new address={p.read(b):#x}")

    p.madvise(b, 4096, MADV.DONTNEED)
    obs["dontneed"] = (p.read(b), pages.read(0), m.folio(pfn).mapcount)
    _say(out, "3. MADV_DONTNEED: the mapping lets the page go",
         f"read={p.read(b):#x} (zero page) pin reads={pages.read(0):#x} "
         f"mapcount={m.folio(pfn).mapcount}")
    p.write(b, 0x3333)
    pages.write(0, 0x4444)
    obs["diverged"] = (p.read(b), pages.read(0), p.mm.pte(b).pfn != pfn)
    _say(out, "4. the process writes 0x3333, the device 0x4444",
         f"process reads={p.read(b):#x} device holds={pages.read(0):#x}: two pages now")
    out("  The pin never follows the mapping once it is zapped: a user of")
    out("  MADV_DONTNEED on registered memory silently stops sharing it with the device.")
    p.mm.unpin_user_pages(pages)
    obs["freed"] = m.folio(pfn).refcount == 0
    p.exit()
    m.check()
    return obs


def add_world(sub) -> None:
    w = sub.add_parser("world", help="write-notify on a MAP_SHARED file mapping, step by step")
    w.add_argument("--fs", default="ext4", choices=sorted(PRESETS),
                   help="file-system preset (default ext4)")
    w.add_argument("--story", choices=["writenotify", "pin"], default="writenotify",
                   help="writenotify (default), or pin: a pin across mremap and MADV_DONTNEED")
    w.add_argument("--json", action="store_true", help="print the observations as JSON")


def cmd_world(args) -> int:
    story = pin_story if args.story == "pin" else (lambda out: world(out, fs_name=args.fs))
    if args.json:
        print(json.dumps(story(lambda s: None), indent=1, default=str))
    else:
        story(print)
    return EXIT_OK


# ---------------------------------------------------------------------------
# demo: the seed's story

def _state(m: Machine, p, f, fs, addr: int, pfn: Optional[int]) -> dict:
    """The page's state for the timeline: what a PTE, the folio, the disk
    and the file system show right now."""
    pte = p.mm.pte(addr)
    frame = pfn if pfn is not None else (pte.pfn if pte.present else None)
    folio = m.folio(frame) if frame is not None else None
    return {"PTE write bit": bool(pte.present and pte.write),
            "folio dirty": bool(folio and folio.dirty),
            "pinned": bool(folio and folio.maybe_dma_pinned),
            # a file system without writeback has no disk copy to show
            "disk": f"{f.disk(0):#x}" if fs.fstype.writeback else "none",
            "page_mkwrite calls": fs.stats()["page_mkwrite"],
            "fs warnings": len(fs.warnings)}


def seed_story(policy: str, fs_name: str = "ext4", out: Callable[[str], None] = print) -> dict:
    """The seed's scenario (docs/kernel-rules.md §7.2) on one machine:
    a long-term writable pin of a MAP_SHARED file page, writeback, a write
    through the pin, unpin with dirty.  Returns what happened (the tests
    check it); ``obs["story"]`` is the timeline (``pygup.tools.timeline``)."""
    from pygup.explain import explain
    m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
    fs = m.mount(fs_name)
    f = fs.create("data", 4096)
    p = m.spawn()
    addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    story = Story(f"policy {policy}: {fs_name} MAP_SHARED file, "
                  "pin_user_pages(FOLL_LONGTERM|FOLL_WRITE)")
    obs: dict = {"policy": policy, "fs": fs_name, "story": story}
    out(f"\n== policy {policy}: {fs_name} MAP_SHARED file, pinned FOLL_LONGTERM|FOLL_WRITE ==")
    p.write(addr, 0x1111)
    mk = fs.stats()["page_mkwrite"]
    label = "write 0x1111: fault, " + ("page_mkwrite, folio dirty" if mk else
                                       "folio dirty (no page_mkwrite)")
    _say(out, f"1. user {label}", f"page_mkwrite={mk}")
    story.add("user process", label, **_state(m, p, f, fs, addr, None))
    flags = FOLL.LONGTERM | FOLL.WRITE
    ret, pages = p.mm.pin_user_pages(addr, 1, flags)
    obs["pin"] = ret
    if ret < 0:
        ex = explain(p.mm, addr, 1, flags)
        obs["decided_by"] = ex.decided.rule if ex.decided else None
        _say(out, "2. pin_user_pages(FOLL_LONGTERM|FOLL_WRITE)", f"= {ret} (refused)")
        story.add("driver (GUP)", f"pin refused: {obs['decided_by']} ({ret})",
                  **_state(m, p, f, fs, addr, None))
        for line in ex.trace.format().splitlines():
            out("     " + line)
        obs.update(warnings=len(fs.warnings), lost=False)
        story.outcome = "pin refused: the file system keeps every write"
        p.exit()
        m.check()
        return obs
    pfn = pages[0]
    _say(out, "2. pin_user_pages(FOLL_LONGTERM|FOLL_WRITE)", f"= {ret} (pinned pfn {pfn:#x})")
    story.add("driver (GUP)", f"pin_user_pages = {ret}", **_state(m, p, f, fs, addr, pfn))
    written = f.writeback()
    pte = p.mm.pte(addr)
    if written:
        label = "writeback: folio_mkclean, PTE write-protected, disk updated"
    else:
        label = "writeback: nothing to do (no backing store)"
    _say(out, f"3. {label}", f"dirty={m.folio(pfn).dirty} pte.write={pte.write} "
         f"disk={f.disk(0):#x}")
    story.add("writeback", label, **_state(m, p, f, fs, addr, pfn))
    pages.write(0, 0x2222)
    mk = fs.stats()["page_mkwrite"]
    _say(out, "4. pin holder writes 0x2222 through the direct map",
         f"dirty={m.folio(pfn).dirty} page_mkwrite={mk} (nobody told)")
    story.add("device (pin holder)", "DMA write 0x2222 through the direct map: no fault",
              **_state(m, p, f, fs, addr, pfn))
    m.evict(f)
    private = bool(m.folio(pfn).flags & m.folio(pfn).flags.PRIVATE)
    _say(out, "5. reclaim: unmapped, fs-private state released, kept", f"buffers={private}")
    story.add("reclaim", "unmap; fs-private state released; pinned folio kept",
              **_state(m, p, f, fs, addr, pfn))
    p.mm.unpin_user_pages_dirty_lock(pages, True)
    _say(out, "6. unpin_user_pages_dirty_lock(make_dirty=true)", f"fs warnings={len(fs.warnings)}")
    story.add("driver (GUP)", "unpin_user_pages_dirty_lock(make_dirty)",
              **_state(m, p, f, fs, addr, pfn))
    m.writeback()
    m.evict(f)
    value = p.read(addr)
    obs.update(warnings=len(fs.warnings), disk=f.disk(0), read_back=value,
               lost=value != 0x2222)
    verdict = "WRITE LOST" if value != 0x2222 else "intact"
    _say(out, "7. sync, reclaim, read the file back",
         f"disk={f.disk(0):#x} read={value:#x} -> {verdict}")
    story.add("user process", f"sync, reclaim, read back {value:#x}",
              **_state(m, p, f, fs, addr, None))
    story.outcome = (f"read back {value:#x}: the device's 0x2222 was LOST" if value != 0x2222
                     else f"read back {value:#x}: intact")
    for w in fs.warnings:
        out(f"     {fs.name} warning: {w.file} page {w.index}: {w.what}")
    p.exit()
    m.check()
    return obs


DEMO_FS = ("ext4", "tmpfs")
DEMO_POLICIES = ("6.4", "6.5")


def demo(out: Callable[[str], None] = print, fs_names=DEMO_FS, policies=DEMO_POLICIES
         ) -> list[dict]:
    """The seed's story under each policy on each file system (default: 6.4
    and 6.5 on ext4 and tmpfs)."""
    out("pygup demo: Linux 6.5 'disallow GUP writing to file-backed mappings by default'")
    return [seed_story(pol, fs, out) for fs in fs_names for pol in policies]


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the seed's story: a long-term writable pin of a file page")
    d.add_argument("--fs", action="append", choices=sorted(PRESETS), metavar="FS",
                   help="file-system preset, repeatable (default: ext4 and tmpfs); "
                        f"one of {', '.join(sorted(PRESETS))}")
    d.add_argument("--policy", action="append", choices=_policies(), metavar="P",
                   help=f"kernel policy, repeatable (default: 6.4 and 6.5); one of "
                        f"{', '.join(_policies())}")
    d.add_argument("--json", action="store_true", help="print what happened as JSON")
    d.add_argument("--plot", metavar="OUT.svg",
                   help="draw the timelines (page state per step, a lane per actor); "
                        ".svg, .png or .pdf; needs matplotlib")


def cmd_demo(args) -> int:
    from pygup.tools.timeline import check_plot_path, plot_stories
    if args.plot:
        check_plot_path(args.plot)
    fs_names = args.fs or DEMO_FS
    policies = args.policy or DEMO_POLICIES
    out = (lambda s: None) if args.json else print
    results = demo(out, fs_names, policies)
    if args.json:
        print(json.dumps([{**{k: v for k, v in r.items() if k != "story"},
                           "story": r["story"].to_json()} for r in results], indent=1))
    if args.plot:
        plot_stories([r["story"] for r in results], args.plot)
        if not args.json:
            print(f"\ntimeline written to {args.plot}")
    return EXIT_OK


# ---------------------------------------------------------------------------
# explain

EXPLAIN_FS = sorted(PRESETS) + ["anon", "dax", "memfd"]


def _backing_for(fs: str, mapping: str) -> str:
    """explain's --fs/--map pair as a can-pin backing name."""
    from pygup.canpin import BACKINGS
    if fs == "anon":
        return "anon" if mapping == "private" else "anon-shared"
    if fs in ("secretmem", "memfd"):
        return fs if mapping == "shared" else fs + "-private"
    name = fs + ("-private" if mapping == "private" else "")
    assert name in BACKINGS, name
    return name


def _policy_version(text: str) -> str:
    """argparse type: a version policy_for() knows (its message otherwise)."""
    from pygup.config.policy import policy_for
    try:
        policy_for(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _parse_foll(text: str) -> int:
    flags = 0
    for name in filter(None, (n.strip() for n in text.split(","))):
        key = name.upper().removeprefix("FOLL_")
        if key not in FOLL.__members__:
            raise argparse.ArgumentTypeError(
                f"unknown FOLL flag {name!r}; choose from {', '.join(FOLL.__members__)}")
        flags |= FOLL[key]
    return flags


def _parse_prot(text: str) -> str:
    if not text or not set(text) <= set("rwx-"):
        raise argparse.ArgumentTypeError(f"prot must be letters from 'rwx', got {text!r}")
    return text.replace("-", "")


def add_explain(sub) -> None:
    from pygup.canpin import CALLERS
    from pygup.explain import APIS
    e = sub.add_parser("explain", help="which rule decides a GUP call, and why "
                       "(exit 0 allowed, 1 refused)")
    e.add_argument("--fs", default="ext4", choices=EXPLAIN_FS, metavar="FS",
                   help=f"backing: a file-system preset, anon, memfd or dax (default ext4); "
                        f"one of {', '.join(EXPLAIN_FS)}")
    e.add_argument("--map", choices=["shared", "private"], default="shared",
                   help="MAP_SHARED or MAP_PRIVATE (default shared)")
    e.add_argument("--prot", default="rw", type=_parse_prot, help="r, w, x letters (default rw)")
    e.add_argument("--flags", default="LONGTERM,WRITE", type=_parse_foll,
                   help="FOLL flags, comma separated (default LONGTERM,WRITE); ignored "
                        "with --caller, which uses its own")
    e.add_argument("--api", default="pin_user_pages", choices=sorted(APIS),
                   help="the GUP entry point (default pin_user_pages)")
    e.add_argument("--caller", choices=sorted(CALLERS), metavar="CALLER",
                   help="run a real caller instead of a bare entry point, with the flags it "
                        f"uses; one of {', '.join(sorted(CALLERS))}")
    e.add_argument("--policy", default="6.5", type=_policy_version,
                   help="kernel version 6.1 .. 6.18, e.g. 6.1, 6.12, 6.1.192 (default 6.5)")
    e.add_argument("--prefault", action="store_true", help="fault the page in first (with "
                   "--caller the page is always read in first)")
    e.add_argument("--json", action="store_true", help="print the decision and trace as JSON")


def cmd_explain(args) -> int:
    from pygup.canpin import explain_caller
    backing = _backing_for(args.fs, args.map)
    if args.caller:
        cell = explain_caller(args.caller, backing, args.policy, args.prot)
        if args.json:
            print(json.dumps(cell.to_json(with_trace=True), indent=1, default=str))
        else:
            print(f"{args.caller} on {backing} prot={args.prot} policy={args.policy}: "
                  + ("allowed" if cell.allowed else f"refused ({cell.short()})"))
            print(cell.trace.format() if cell.trace is not None else "")
            if not cell.allowed and cell.advice:
                print(f"  advice: {cell.advice}")
            if not cell.allowed and cell.since:
                print(f"  since: {cell.since}")
        return EXIT_OK if cell.allowed else EXIT_REFUSED
    return _explain_api(args, backing)


def _explain_api(args, backing: str) -> int:
    from pygup.canpin import BACKINGS
    from pygup.errors import GupError
    from pygup.explain import explain
    from pygup.flags import errno_name
    m = Machine(policy=args.policy, memory="64MiB", movable="8MiB")
    file, size, mflags = BACKINGS[backing].make(m)
    p = m.spawn()
    prot = PROT.NONE
    for ch in args.prot:
        prot |= {"r": PROT.READ, "w": PROT.WRITE, "x": PROT.EXEC}[ch]
    try:
        addr = p.mmap(size, prot, mflags, file=file)
    except GupError as e:
        msg = f"mmap of {backing} refused: -{errno_name(-e.errno)} ({e.strerror})"
        print(json.dumps({"allowed": False, "rule": "mmap", "errno": errno_name(-e.errno),
                          "detail": e.strerror}) if args.json else msg)
        return EXIT_REFUSED
    if args.prefault:
        p.read(addr)
    ex = explain(p.mm, addr, 1, args.flags, args.api)
    allowed = ex.ret >= 0 and ex.decided is None
    if args.json:
        print(json.dumps({"api": ex.api, "gup_flags": int(ex.gup_flags), "ret": ex.ret,
                          "allowed": allowed,
                          "rule": ex.decided.rule if ex.decided else None,
                          "trace": [vars(s) for s in ex.trace.steps]}, indent=1, default=str))
    else:
        print(f"{args.fs} {args.map} prot={args.prot} policy={args.policy}")
        print(ex.format())
    return EXIT_OK if allowed else EXIT_REFUSED


# ---------------------------------------------------------------------------
# can-pin

CAN_PIN_BACKINGS = ["ext4", "xfs", "tmpfs", "hugetlbfs", "ext4-private", "dax"]
CAN_PIN_CALLERS = ["io_uring", "rdma", "vfio"]


def add_can_pin(sub) -> None:
    from pygup.canpin import BACKINGS, CALLERS
    c = sub.add_parser("can-pin", help="can my users pin X? backings x callers x kernels in "
                       "one table (exit 0 all allowed, 1 some refused)")
    c.add_argument("--backing", nargs="+", choices=sorted(BACKINGS), metavar="B",
                   default=None, help=f"backings (default {' '.join(CAN_PIN_BACKINGS)}); "
                   f"from {', '.join(sorted(BACKINGS))}")
    c.add_argument("--caller", nargs="+", choices=sorted(CALLERS), metavar="C", default=None,
                   help=f"callers (default {' '.join(CAN_PIN_CALLERS)}); from "
                        f"{', '.join(sorted(CALLERS))}")
    c.add_argument("--policy", nargs="+", type=_policy_version, metavar="P", default=None,
                   help="kernel versions 6.1 .. 6.18, e.g. 6.1 6.12 6.1.192 (default: every "
                        f"preset, {' '.join(_policies())})")
    c.add_argument("--prot", default="rw", type=_parse_prot,
                   help="protection of the mapping (default rw)")
    c.add_argument("--no-prefault", action="store_true",
                   help="do not read the buffer in before the caller runs")
    c.add_argument("--json", action="store_true", help="print the cells as JSON")
    c.add_argument("--trace", action="store_true", help="with --json: each cell's full trace")


def cmd_can_pin(args) -> int:
    from pygup.canpin import can_pin, format_matrix, matrix_json
    cells = can_pin(args.backing or CAN_PIN_BACKINGS, args.caller or CAN_PIN_CALLERS,
                    args.policy or _policies(), args.prot, not args.no_prefault)
    if args.json:
        print(json.dumps(matrix_json(cells, args.trace), indent=1, default=str))
    else:
        print(format_matrix(cells))
    return EXIT_OK if all(c.allowed for c in cells) else EXIT_REFUSED


# ---------------------------------------------------------------------------
# oracle, bench, fuzz: their modules declare and run them

def add_oracle(sub) -> None:
    o = sub.add_parser("oracle", help="compare pygup with this machine's real kernel")
    o.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    o.add_argument("--only", metavar="BACKING",
                   help="comma-separated backings (anon, memfd, tmpfs, workdir, ext2, ext4, "
                        "xfs, btrfs, ramfs, hugetlbfs, secretmem, readonly)")
    o.add_argument("--policy", default=None,
                   help="pygup policy (default: the preset nearest the kernel's release)")
    o.add_argument("--kernel", default=None, metavar="6.1|6.12|host|PATH",
                   help="run the kernel side in a guest booted under qemu (virtme-ng): a "
                        "Debian kernel version, release or package (downloaded once into "
                        "~/.cache/pygup/kernels), or a vmlinuz path; default: this host")


def cmd_oracle(args) -> int:
    from pygup.tools.oracle.guest import GuestError
    from pygup.tools.oracle.guest_side import GuestSetupError
    from pygup.tools.oracle.report import oracle_main
    try:
        return oracle_main(only=args.only, policy=args.policy, json_out=args.json,
                           kernel=args.kernel)
    except GuestSetupError as exc:
        print(f"pygup oracle: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GuestError as exc:
        print(f"pygup oracle: the guest failed: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


def add_bench(sub) -> None:
    from pygup.tools.bench import add_arguments
    add_arguments(sub.add_parser("bench", help="benchmarks: ratios to the reference and the "
                                 "kernel"))


def cmd_bench(args) -> int:
    from pygup.tools.bench import main as bench_main
    return bench_main(args)


def add_fuzz(sub) -> None:
    from pygup.tools.fuzz.campaign import add_arguments
    add_arguments(sub.add_parser("fuzz", help="the fuzzing harness: seeded campaigns, replay, "
                                 "merge, selftest (exit 0 clean, 1 violation, 2 usage, "
                                 "3 internal error)"))


def cmd_fuzz(args) -> int:
    from pygup.tools.fuzz.campaign import run as fuzz_run
    return fuzz_run(args)


def add_explore(sub) -> None:
    from pygup.tools.explore import add_arguments
    ex = sub.add_parser("explore", help="every interleaving of a built-in race, to a "
                        "preemption bound: deterministic race hunting")
    add_arguments(ex)
    ex.add_argument("--plot", metavar="OUT.svg",
                    help="draw the failing schedule (or the --replay file's): CPU lanes, "
                         "the window of each step, the state it saw; .svg, .png or .pdf")


def cmd_explore(args) -> int:
    import os
    from pygup.tools.explore import run_cli
    if not args.plot:
        return run_cli(args)
    from pygup.tools.timeline import check_plot_path
    check_plot_path(args.plot)
    if not args.replay and not args.json:
        # the schedule lands beside the picture, replayable
        args.json = os.path.splitext(args.plot)[0] + ".json"
    rc = run_cli(args)
    source = args.replay or args.json
    if rc not in (0, 1) or not source or not os.path.exists(source):
        return rc
    from pygup.tools.fuzz.plot import plot_explore_file
    if plot_explore_file(source, args.plot):
        print(f"timeline written to {args.plot}")
    else:
        print("no failing schedule: nothing to plot")
    return rc


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "demo": (add_demo, cmd_demo),
    "world": (add_world, cmd_world),
    "explain": (add_explain, cmd_explain),
    "can-pin": (add_can_pin, cmd_can_pin),
    "oracle": (add_oracle, cmd_oracle),
    "bench": (add_bench, cmd_bench),
    "fuzz": (add_fuzz, cmd_fuzz),
    "explore": (add_explore, cmd_explore),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pygup", description="pygup: a Linux get_user_pages (GUP) emulator.",
        epilog="exit status: 0 allowed/clean, 1 refused/violation, 2 usage error, "
               "3 internal error")
    parser.add_argument("--version", action="version", version=f"pygup {_version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    # `kill -USR1 <pid>` prints every thread's Python stack to stderr: where a
    # long campaign (or a stuck one) is, without stopping it
    if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
        try:
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (AttributeError, OSError, ValueError):   # stderr is not a file (captured)
            pass
    parser = build_parser()
    try:                      # shell completion: pip install 'pygup[completion]'
        import argcomplete
        argcomplete.autocomplete(parser)
    except ImportError:
        pass
    args = parser.parse_args(argv)
    _, cmd = COMMANDS[args.cmd]
    try:
        return cmd(args)
    except ValueError as exc:      # a bad value the parser could not see
        parser.error(str(exc))
    except KeyboardInterrupt:
        print("pygup: interrupted", file=sys.stderr)
        return 130
    return EXIT_INTERNAL  # pragma: no cover  (parser.error exits)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
