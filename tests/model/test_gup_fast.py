"""GUP-fast (csrc/gup_fast.c): differential against the plain-Python
reference on random states, the 6.5 fast-pin whitelist, the fallback, and
the write_protect_seq back-off."""
import errno
import random

import numpy as np
import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup._native import C
from pygup.tools.reference import gup_fast_reference

RW = PROT.READ | PROT.WRITE
P = 4096
FLAG_SETS = [
    FOLL.GET, FOLL.GET | FOLL.WRITE, FOLL.PIN, FOLL.PIN | FOLL.WRITE,
    FOLL.PIN | FOLL.LONGTERM, FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE,
    FOLL.GET | FOLL.FORCE, FOLL.PIN | FOLL.WRITE | FOLL.FORCE,
]


def random_world(seed: int, thp: bool = False):
    """A machine with a handful of random mappings, partly faulted in, some
    made read-only or PROT_NONE, some COW-shared with a child.  With thp,
    the machine has THP "always" and some mappings are 2 MiB-aligned anon
    ranges: PMD-mapped THPs, some split to PTEs by a partial mprotect."""
    rng = random.Random(seed)
    m = Machine(policy=rng.choice(["6.4", "6.5"]), memory="64MiB",
                movable=rng.choice(["0MiB", "8MiB"]), cpus=2, secretmem=True,
                thp="always" if thp else "madvise")
    p = m.spawn()
    ext4, tmpfs = m.mount("ext4"), m.mount("tmpfs")
    regions = []
    kinds = ["anon", "anon", "shared-anon", "ext4", "ext4-private", "tmpfs",
             "hugetlb", "secretmem", "pfn"] + ["thp"] * (4 if thp else 0)
    for i in range(rng.randint(2, 5)):
        kind = rng.choice(kinds)
        n = rng.randint(1, 12)
        if kind == "thp":
            n = 512
            with m.kernel.op():
                hint = p.mm.get_unmapped_area(n * P, 512 * P)
            a = p.mmap(n * P, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, addr=hint)
        elif kind == "anon":
            a = p.mmap(n * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        elif kind == "shared-anon":
            a = p.mmap(n * P, RW, MAP.SHARED | MAP.ANONYMOUS)
        elif kind in ("ext4", "ext4-private"):
            f = ext4.create(f"f{i}", n * P)
            a = p.mmap(n * P, RW, MAP.SHARED if kind == "ext4" else MAP.PRIVATE, file=f)
        elif kind == "tmpfs":
            a = p.mmap(n * P, RW, MAP.SHARED, file=tmpfs.create(f"t{i}", n * P))
        elif kind == "hugetlb":
            n = 512
            a = p.mmap(n * P, RW, MAP.PRIVATE | MAP.ANONYMOUS | MAP.HUGETLB)
        elif kind == "secretmem":
            a = p.mmap(n * P, RW, MAP.SHARED, file=m.memfd_secret(n * P))
        else:
            a = p.mmap_pfn(n * P, RW)
        regions.append((a, n))
        step = 64 if kind in ("hugetlb", "thp") else 1
        for j in range(0, n, step):
            r = rng.random()
            if r < 0.45:
                p.write(a + j * P, rng.getrandbits(32))
            elif r < 0.7:
                p.read(a + j * P)
        if rng.random() < 0.25 and kind not in ("hugetlb", "thp"):
            j = rng.randrange(n)
            p.mprotect(a + j * P, P, rng.choice([PROT.READ, PROT.NONE]))
        if kind == "thp" and rng.random() < 0.4:
            j = rng.randrange(1, n)          # split the PMD (the folio stays large)
            p.mprotect(a + j * P, P, rng.choice([PROT.READ, PROT.NONE]))
    if rng.random() < 0.4:
        p.fork()                                 # COW-shares the anon pages
    return m, p, regions, rng


def _apply(m, p, fn, start, nr, flags):
    before = m._core.snapshot()["refcount"]
    pfns = list(fn(start, nr, flags))
    delta = m._core.snapshot()["refcount"] - before
    pins = {pfn: m.folio(pfn).pincount for pfn in pfns}
    for pfn in pfns:
        m._core.gup_put(pfn, 1, bool(flags & FOLL.PIN))
    return pfns, delta, pins


@pytest.mark.parametrize("thp", [False, True], ids=["base", "thp"])
@pytest.mark.parametrize("seed", range(60))
def test_differential_c_vs_reference(seed, thp):
    m, p, regions, rng = random_world(seed, thp)
    cpu = m.current_cpu()
    base = m._core.snapshot()["refcount"]
    for _ in range(6):
        a, n = rng.choice(regions)
        start = a + rng.randrange(n) * P
        nr = rng.randint(1, n + 3)
        for flags in FLAG_SETS:
            c = _apply(m, p, lambda s, k, f: m._core.gup_fast(
                cpu, p.mm.id, s, k, int(f), _bits(m)).tolist(), start, nr, flags)
            r = _apply(m, p, lambda s, k, f: gup_fast_reference(m, p.mm, s, k, int(f)),
                       start, nr, flags)
            assert c[0] == r[0], (seed, hex(start), nr, flags)
            assert np.array_equal(c[1], r[1]), (seed, hex(start), nr, flags)
            assert c[2] == r[2]
    assert np.array_equal(m._core.snapshot()["refcount"], base)   # everything released
    m.check()


def _bits(m):
    return m.policy.gup_fast_bits


def _shared(m, preset, n=4):
    f = m.mount(preset).create("f", n * P)
    p = m.spawn()
    a = p.mmap(n * P, RW, MAP.SHARED, file=f)
    for i in range(n):
        p.write(a + i * P, i)
    return p, a, f


LT_W = FOLL.PIN | FOLL.LONGTERM | FOLL.WRITE


@pytest.mark.parametrize("preset", ["ext4", "xfs", "btrfs", "ramfs", "nfs"])
def test_whitelist_refuses_dirty_tracked_files(preset):
    m = Machine(memory="64MiB", movable="0MiB")
    p, a, f = _shared(m, preset)
    cpu = m.current_cpu()
    assert len(m._core.gup_fast(cpu, p.mm.id, a, 4, LT_W, C.GUPF_WHITELIST)) == 0
    # ... so pin_user_pages_fast falls back, and the slow path refuses
    assert p.mm.pin_user_pages_fast(a, 4, FOLL.LONGTERM | FOLL.WRITE)[0] == -errno.EFAULT
    # without the whitelist (6.4) GUP-fast pins them itself
    got = m._core.gup_fast(cpu, p.mm.id, a, 4, LT_W, 0)
    assert len(got) == 4
    m._core.gup_put_pages(got, True)
    # a short-term or read-only pin is not the whitelist's business
    for flags in (FOLL.PIN | FOLL.WRITE, FOLL.PIN | FOLL.LONGTERM):
        got = m._core.gup_fast(cpu, p.mm.id, a, 4, flags, C.GUPF_WHITELIST)
        assert len(got) == 4
        m._core.gup_put_pages(got, True)


@pytest.mark.parametrize("what", ["anon", "shared-anon", "tmpfs", "memfd", "hugetlb"])
def test_whitelist_passes_anon_shmem_hugetlb(what):
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    n = 512 if what == "hugetlb" else 4
    if what == "anon":
        a = p.mmap(n * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    elif what == "shared-anon":
        a = p.mmap(n * P, RW, MAP.SHARED | MAP.ANONYMOUS)
    elif what == "tmpfs":
        a = p.mmap(n * P, RW, MAP.SHARED, file=m.mount("tmpfs").create("t", n * P))
    elif what == "memfd":
        a = p.mmap(n * P, RW, MAP.SHARED, file=m.memfd_create("x", n * P))
    else:
        a = p.mmap(n * P, RW, MAP.SHARED, file=m.memfd_create("h", n * P, hugetlb=True))
    for i in range(0, n, 64 if what == "hugetlb" else 1):
        p.write(a + i * P, 1)
    got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, n, LT_W, C.GUPF_WHITELIST)
    assert len(got) == n
    m._core.gup_put_pages(got, True)
    ret, pages = p.mm.pin_user_pages_fast(a, n, FOLL.LONGTERM | FOLL.WRITE)
    assert ret == n


def test_truncated_folio_falls_back():
    """A folio whose mapping is NULL (truncation under way) is not pinned by
    GUP-fast: it may have been truncated, so the slow path decides.  With the
    null_mapping_ok switch (the v8 review's bug) it is."""
    for mutants, expect in (((), 0), (("null_mapping_ok",), 1)):
        m = Machine(memory="64MiB", movable="0MiB", mutants=mutants)
        p, a, f = _shared(m, "tmpfs", 1)
        pfn = p.mm.pte(a).pfn
        m._core.set_mapping(pfn, 0, 0)          # truncate's folio->mapping = NULL
        got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, LT_W, C.GUPF_WHITELIST)
        assert len(got) == expect
        if len(got):
            m._core.gup_put_pages(got, True)


def test_longterm_pin_of_movable_page_falls_back_and_migrates():
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 5)
    assert m.folio(p.mm.pte(a).pfn).zone == "movable"
    assert len(m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, FOLL.PIN | FOLL.LONGTERM, 1)) == 0
    ret, pages = p.mm.pin_user_pages_fast(a, 1, FOLL.LONGTERM)
    assert ret == 1 and m.folio(pages[0]).zone == "normal" and pages.read(0) == 5


def test_fast_partial_then_fallback():
    """The fast walk stops at the first page it cannot take; the slow path
    does the rest (faulting in the missing page)."""
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(4 * P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    p.write(a + P, 2)
    assert len(m._core.gup_fast(m.current_cpu(), p.mm.id, a, 4, FOLL.GET, 0)) == 2
    ret, pages = p.mm.get_user_pages_fast(a, 4, FOLL.WRITE)
    assert ret == 4 and p.mm.pte(a + 3 * P).present
    ret, pages = p.mm.get_user_pages_fast_only(a + 4 * P, 1, 0)   # unmapped: no fallback
    assert ret == 0


def test_fast_path_backs_off_while_fork_copies():
    """write_protect_seq odd (fork in its copy): a FOLL_PIN walk returns 0
    and the slow path decides; FOLL_GET does not care."""
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    seq = m._core.mm_wp_seq(p.mm.id)
    p.fork()
    assert m._core.mm_wp_seq(p.mm.id) == seq + 2           # begin + end
    c = m.spawn()
    b = c.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    c.write(b, 1)
    assert len(m._core.gup_fast(m.current_cpu(), c.mm.id, b, 1, FOLL.PIN, 1)) == 1


def test_fast_secretmem_refused_unless_switch():
    for mutants, expect in (((), 0), (("fast_secretmem",), 1)):
        m = Machine(memory="64MiB", movable="0MiB", mutants=mutants)
        p = m.spawn()
        a = p.mmap(P, RW, MAP.SHARED, file=m.memfd_secret(P))
        p.write(a, 1)
        got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, FOLL.GET, 1)
        assert len(got) == expect
        if expect:
            m._core.gup_put_pages(got, False)


def test_fast_unshare_of_cow_shared_anon():
    """A read-only FOLL_PIN of an anon page shared with a child after fork
    must fall back (gup_must_unshare); fast_no_unshare pins it anyway."""
    for mutants, expect in (((), 0), (("fast_no_unshare",), 1)):
        m = Machine(memory="64MiB", movable="0MiB", mutants=mutants)
        p = m.spawn()
        a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.write(a, 1)
        p.fork()
        got = m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, FOLL.PIN, 1)
        assert len(got) == expect


def test_whitelist_inverted_switch():
    m = Machine(memory="64MiB", movable="0MiB", mutants={"whitelist_inverted"})
    p, a, f = _shared(m, "ext4", 1)
    assert len(m._core.gup_fast(m.current_cpu(), p.mm.id, a, 1, LT_W, C.GUPF_WHITELIST)) == 1


def test_unpin_no_bias_unbalances():
    m = Machine(memory="64MiB", movable="0MiB", mutants={"unpin_no_bias"})
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    ret, pages = p.mm.pin_user_pages_fast(a, 1, 0)
    p.mm.unpin_user_pages(pages)
    assert m.folio(p.mm.pte(a).pfn).refcount == 1 + 1023     # the leak the audit sees


def test_fast_entry_errors():
    m = Machine(memory="64MiB", movable="0MiB")
    p = m.spawn()
    assert p.mm.pin_user_pages_fast(0x1000, 1, FOLL.DUMP)[0] == -errno.EINVAL
    assert p.mm.get_user_pages_fast(0x1000, 1, FOLL.PIN)[0] == -errno.EINVAL
    assert p.mm.get_user_pages_fast(C.TASK_SIZE_MAX, 2, 0)[0] == -errno.EFAULT
    assert p.mm.get_user_pages_fast((1 << 64) - P, 2, 0)[0] == -errno.EOVERFLOW
    assert p.mm.get_user_pages_fast(0x1000, 0, 0)[0] == 0
    from pygup import GupError
    for bad in [(0x1001, 1), (0x1000, -1), (C.TASK_SIZE_MAX, 1 << 40)]:   # the core checks too
        with pytest.raises(GupError) as e:
            m._core.gup_fast(m.current_cpu(), p.mm.id, bad[0], bad[1], FOLL.GET, 0)
        assert e.value.errno == errno.EINVAL
