"""The ``pygup`` command."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

from pygup.flags import FOLL, MADV, MAP, MREMAP, PROT
from pygup.machine import Machine


def _say(out: Callable[[str], None], step: str, detail: str = "") -> None:
    out(f"  {step:<58} {detail}".rstrip())


def world(out: Callable[[str], None] = print, fs_name: str = "ext4") -> dict:
    """The world GUP lives in: write-notify on a dirty-tracked shared file
    mapping.  Returns the observations (the tests check them)."""
    m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    fs = m.mount(fs_name)
    f = fs.create("data", 4096)
    p = m.spawn()
    addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    vma = p.mm.find_vma(addr)
    from pygup.kernel.vma import vma_needs_dirty_tracking, vma_wants_writenotify
    obs: dict = {"needs_dirty_tracking": vma_needs_dirty_tracking(vma),
                 "wants_writenotify": vma_wants_writenotify(vma)}
    out(f"pygup world: a MAP_SHARED mapping of {fs.name}:data at {addr:#x}  ({m!r})")
    _say(out, "vma_needs_dirty_tracking / vma_wants_writenotify",
         f"{obs['needs_dirty_tracking']} / {obs['wants_writenotify']}")

    p.write(addr, 0x1111)
    pte = p.mm.pte(addr)
    folio = m.folio(pte.pfn)
    obs["first_write"] = (fs.stats()["page_mkwrite"], folio.dirty, pte.write)
    _say(out, "1. user write 0x1111: fault -> page_mkwrite -> dirty",
         f"page_mkwrite={fs.stats()['page_mkwrite']} dirty={folio.dirty} pte.write={pte.write}")

    written = f.writeback()
    pte = p.mm.pte(addr)
    folio = m.folio(pte.pfn)
    obs["writeback"] = (written, folio.dirty, pte.write, f.disk(0))
    _say(out, "2. writeback: folio_mkclean write-protects, disk updated",
         f"written={written} dirty={folio.dirty} pte.write={pte.write} disk={f.disk(0):#x}")

    p.write(addr, 0x2222)
    pte = p.mm.pte(addr)
    folio = m.folio(pte.pfn)
    obs["second_write"] = (fs.stats()["page_mkwrite"], folio.dirty, pte.write)
    _say(out, "3. user write 0x2222: write-protect fault notifies again",
         f"page_mkwrite={fs.stats()['page_mkwrite']} dirty={folio.dirty} pte.write={pte.write}")

    written = m.writeback()
    obs["final_disk"] = f.disk(0)
    obs["warnings"] = len(fs.warnings)
    _say(out, "4. sync: the file system saw every write",
         f"disk={f.disk(0):#x} warnings={len(fs.warnings)}")
    out("  A GUP pin writes through the kernel's direct mapping instead, where none of")
    out("  this happens: that is what Linux 6.5 refuses to long-term pin (see SPEC §7).")
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


def seed_story(policy: str, fs_name: str = "ext4", out: Callable[[str], None] = print) -> dict:
    """The seed's scenario (SPEC §7.2) on one machine: a long-term writable
    pin of a MAP_SHARED file page, writeback, a write through the pin, unpin
    with dirty.  Returns what happened (the tests check it)."""
    from pygup.flags import FOLL
    from pygup.explain import explain
    m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
    fs = m.mount(fs_name)
    f = fs.create("data", 4096)
    p = m.spawn()
    addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    obs: dict = {"policy": policy, "fs": fs_name}
    out(f"\n== policy {policy}: {fs_name} MAP_SHARED file, pinned FOLL_LONGTERM|FOLL_WRITE ==")
    p.write(addr, 0x1111)
    _say(out, "1. user write 0x1111 (page_mkwrite, folio dirty)",
         f"page_mkwrite={fs.stats()['page_mkwrite']}")
    flags = FOLL.LONGTERM | FOLL.WRITE
    ret, pages = p.mm.pin_user_pages(addr, 1, flags)
    obs["pin"] = ret
    if ret < 0:
        ex = explain(p.mm, addr, 1, flags)
        obs["decided_by"] = ex.decided.rule if ex.decided else None
        _say(out, "2. pin_user_pages(FOLL_LONGTERM|FOLL_WRITE)", f"= {ret} (refused)")
        for line in ex.trace.format().splitlines():
            out("     " + line)
        obs.update(warnings=len(fs.warnings), lost=False)
        p.exit()
        m.check()
        return obs
    _say(out, "2. pin_user_pages(FOLL_LONGTERM|FOLL_WRITE)", f"= {ret} (pinned pfn {pages[0]:#x})")
    f.writeback()
    pte = p.mm.pte(addr)
    _say(out, "3. writeback: folio_mkclean, PTE write-protected" if fs.fstype.writeback
         else "3. writeback: nothing to do (no backing store)",
         f"dirty={m.folio(pages[0]).dirty} pte.write={pte.write} disk={f.disk(0):#x}")
    pages.write(0, 0x2222)
    _say(out, "4. pin holder writes 0x2222 through the direct map",
         f"dirty={m.folio(pages[0]).dirty} page_mkwrite={fs.stats()['page_mkwrite']} (nobody told)")
    m.evict(f)
    _say(out, "5. reclaim: unmapped, fs-private state released, kept",
         f"buffers={bool(m.folio(pages[0]).flags & m.folio(pages[0]).flags.PRIVATE)}")
    p.mm.unpin_user_pages_dirty_lock(pages, True)
    _say(out, "6. unpin_user_pages_dirty_lock(make_dirty=true)",
         f"fs warnings={len(fs.warnings)}")
    m.writeback()
    m.evict(f)
    value = p.read(addr)
    obs.update(warnings=len(fs.warnings), disk=f.disk(0), read_back=value,
               lost=value != 0x2222)
    _say(out, "7. sync, reclaim, read the file back",
         f"disk={f.disk(0):#x} read={value:#x} -> {'WRITE LOST' if value != 0x2222 else 'intact'}")
    for w in fs.warnings:
        out(f"     {fs.name} warning: {w.file} page {w.index}: {w.what}")
    p.exit()
    m.check()
    return obs


def demo(out: Callable[[str], None] = print) -> list[dict]:
    """The seed's story under 6.4 and 6.5 on ext4, and on tmpfs under both."""
    out("pygup demo: Linux 6.5 'disallow GUP writing to file-backed mappings by default'")
    return [seed_story(pol, fs, out) for fs in ("ext4", "tmpfs") for pol in ("6.4", "6.5")]


def explain_cmd(args) -> int:
    from pygup.flags import FOLL
    from pygup.explain import explain
    m = Machine(policy=args.policy, memory="64MiB", movable="8MiB")
    size = 2 << 20 if args.fs == "hugetlbfs" else 4096
    if args.fs == "anon":
        p = m.spawn()
        addr = p.mmap(size, _prot(args.prot), (MAP.SHARED if args.map == "shared" else MAP.PRIVATE)
                      | MAP.ANONYMOUS)
    else:
        f = m.mount(args.fs).create("file", size)
        p = m.spawn()
        addr = p.mmap(size, _prot(args.prot), MAP.SHARED if args.map == "shared" else MAP.PRIVATE,
                      file=f)
    if args.prefault:
        p.read(addr)
    flags = 0
    for name in filter(None, args.flags.split(",")):
        try:
            flags |= FOLL[name.strip().upper().removeprefix("FOLL_")]
        except KeyError:
            raise SystemExit(f"pygup explain: unknown FOLL flag {name!r}")
    ex = explain(p.mm, addr, 1, flags, args.api)
    print(f"{args.fs} {args.map} prot={args.prot} policy={args.policy}")
    print(ex.format())
    return 0


def _policy_version(text: str) -> str:
    """argparse type: a version policy_for() knows (its message otherwise)."""
    from pygup.config.policy import policy_for
    try:
        policy_for(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _prot(text: str) -> int:
    prot = PROT.NONE
    for ch in text:
        prot |= {"r": PROT.READ, "w": PROT.WRITE, "x": PROT.EXEC, "-": PROT.NONE}[ch]
    return prot


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pygup", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="the seed's story under 6.4 and 6.5")
    w = sub.add_parser("world", help="write-notify on a dirty-tracked file mapping")
    w.add_argument("--fs", default="ext4", help="file-system preset (default ext4)")
    w.add_argument("--story", choices=["writenotify", "pin"], default="writenotify",
                   help="writenotify (default), or pin: a pin across mremap and MADV_DONTNEED")
    e = sub.add_parser("explain", help="which rule decides a GUP call, and why")
    e.add_argument("--fs", default="ext4", help="preset, or 'anon' (default ext4)")
    e.add_argument("--map", choices=["shared", "private"], default="shared")
    e.add_argument("--prot", default="rw", help="r, w, x letters (default rw)")
    e.add_argument("--flags", default="LONGTERM,WRITE", help="FOLL flags, comma separated")
    e.add_argument("--api", default="pin_user_pages")
    e.add_argument("--policy", default="6.5", type=_policy_version,
                   help="kernel version 6.1 .. 6.18, e.g. 6.1, 6.12, 6.1.192 (default 6.5)")
    e.add_argument("--prefault", action="store_true", help="fault the page in first")
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
    bn = sub.add_parser("bench", help="benchmarks: ratios to the reference and the kernel")
    from pygup.tools.bench import add_arguments as bench_arguments
    bench_arguments(bn)
    fz = sub.add_parser("fuzz", help="the fuzzing harness: seeded campaigns, replay, selftest")
    from pygup.tools.fuzz.campaign import add_arguments as fuzz_arguments
    fuzz_arguments(fz)
    ex = sub.add_parser("explore", help="every interleaving of a built-in race, to a "
                                        "preemption bound: deterministic race hunting")
    from pygup.tools.explore import add_arguments as explore_arguments
    explore_arguments(ex)
    args = parser.parse_args(argv)
    if args.cmd == "explore":
        from pygup.tools.explore import run_cli as explore_run
        return explore_run(args)
    if args.cmd == "bench":
        from pygup.tools.bench import main as bench_main
        return bench_main(args)
    if args.cmd == "fuzz":
        from pygup.tools.fuzz.campaign import run as fuzz_run
        return fuzz_run(args)
    if args.cmd == "demo":
        demo()
    elif args.cmd == "world":
        if args.story == "pin":
            pin_story()
        else:
            world(fs_name=args.fs)
    elif args.cmd == "explain":
        return explain_cmd(args)
    elif args.cmd == "oracle":
        from pygup.tools.oracle.guest import GuestError
        from pygup.tools.oracle.guest_side import GuestSetupError
        from pygup.tools.oracle.report import oracle_main
        try:
            return oracle_main(only=args.only, policy=args.policy, json_out=args.json,
                               kernel=args.kernel)
        except ValueError as exc:
            parser.error(str(exc))
        except GuestSetupError as exc:
            print(f"pygup oracle: {exc}", file=sys.stderr)
            return 2
        except GuestError as exc:
            print(f"pygup oracle: the guest failed: {exc}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
