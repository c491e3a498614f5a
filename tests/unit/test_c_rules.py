"""The per-page rules have one implementation each, in C (mm/frames.c,
mm/gup.c), which Python asks through ``Core``: PageAnonExclusive,
folio_is_longterm_pinnable, folio_maybe_dma_pinned, gup_must_unshare,
can_follow_write_pte.  Each test below fails if its rule is removed or
weakened; the last ones compare C with the model's Python versions over
random frames, and check that every value from Python is bounds-checked."""
from __future__ import annotations

import errno

import pytest

from pygup import FOLL, VM, Machine
from pygup._native import C, Core, lib
from pygup.errors import GupError

PIN, GET, WRITE, LONGTERM, FORCE = (int(FOLL.PIN), int(FOLL.GET), int(FOLL.WRITE),
                                    int(FOLL.LONGTERM), int(FOLL.FORCE))
RO_PTE = C.PTE_PRESENT | C.PTE_USER | C.PTE_ACCESSED
RW_PTE = RO_PTE | C.PTE_WRITE
PRIVATE_RO = int(VM.READ | VM.MAYREAD | VM.MAYWRITE)   # a COW mapping, not writable now


@pytest.fixture
def core() -> Core:
    m = Machine(memory="64MiB", movable="16MiB", cpus=2)
    core = m._core
    core._machine = m          # keep it alive
    return core


def anon(core, order=0, zone=0, exclusive=True, hugetlb=False) -> int:
    pfn = core.folio_alloc(order, zone)
    core.set_mapping(pfn, (7 << 2) | C.MAPPING_ANON, 0)
    if hugetlb:
        core.flags_update(pfn, C.F_HUGETLB, 0)
    if exclusive:
        for i in range(1 << order):
            core.flags_update(pfn + i, C.F_ANON_EXCLUSIVE, 0)
    return pfn


def file_folio(core, order=0) -> int:
    pfn = core.folio_alloc(order, 0)
    core.set_mapping(pfn, core.as_new(C.AS_DIRTY_TRACKED) << 2, 3)
    return pfn


# ---- PageAnonExclusive -------------------------------------------------------

def test_page_anon_exclusive_is_per_page(core):
    pfn = anon(core, exclusive=False)
    assert core.page_anon_exclusive(pfn) is False
    core.flags_update(pfn, C.F_ANON_EXCLUSIVE, 0)
    assert core.page_anon_exclusive(pfn) is True
    thp = anon(core, order=C.PMD_ORDER, exclusive=False)
    core.flags_update(thp + 5, C.F_ANON_EXCLUSIVE, 0)
    assert [core.page_anon_exclusive(thp + i) for i in (0, 5, 6)] == [False, True, False]


def test_page_anon_exclusive_of_hugetlb_is_the_heads(core):
    huge = anon(core, order=C.PMD_ORDER, exclusive=False, hugetlb=True)
    core.flags_update(huge + 3, C.F_ANON_EXCLUSIVE, 0)      # a tail's own bit: ignored
    assert core.page_anon_exclusive(huge + 3) is False
    core.flags_update(huge, C.F_ANON_EXCLUSIVE, 0)
    assert all(core.page_anon_exclusive(huge + i) for i in (0, 1, 511))


# ---- folio_is_longterm_pinnable -----------------------------------------------

def test_longterm_pinnable_is_not_movable(core):
    assert core.folio_is_longterm_pinnable(core.folio_alloc(0, C.ZONE_NORMAL)) is True
    mov = core.folio_alloc(0, C.ZONE_MOVABLE)
    assert core.folio_is_longterm_pinnable(mov) is False
    thp = core.folio_alloc(C.PMD_ORDER, C.ZONE_MOVABLE)
    assert core.folio_is_longterm_pinnable(thp + 100) is False
    assert core.folio_is_longterm_pinnable(C.ZERO_PFN) is True


# ---- folio_maybe_dma_pinned ---------------------------------------------------

def test_maybe_dma_pinned_small_folio_counts_the_bias(core):
    pfn = anon(core)
    assert core.folio_maybe_dma_pinned(pfn) is False
    core.folio_get(pfn, C.GUP_PIN_COUNTING_BIAS - 2)            # refcount bias - 1
    assert core.folio_maybe_dma_pinned(pfn) is False
    core.folio_get(pfn, 1)                                       # "maybe": plain refs
    assert core.folio_maybe_dma_pinned(pfn) is True
    core.folio_put(pfn, C.GUP_PIN_COUNTING_BIAS - 1)
    assert core.try_grab_page(pfn, True) == 0                    # a real pin
    assert core.folio_maybe_dma_pinned(pfn) is True
    core.gup_put(pfn, 1, True)
    assert core.folio_maybe_dma_pinned(pfn) is False


def test_maybe_dma_pinned_large_folio_counts_pins_exactly(core):
    thp = anon(core, order=C.PMD_ORDER)
    core.folio_get(thp, 5000)
    assert core.folio_maybe_dma_pinned(thp + 9) is False         # many refs, no pin
    assert core.try_grab_page(thp + 9, True) == 0
    assert core.folio_maybe_dma_pinned(thp) is True
    core.gup_put(thp + 9, 1, True)
    assert core.folio_maybe_dma_pinned(thp + 9) is False


# ---- gup_must_unshare ---------------------------------------------------------

def test_gup_must_unshare_anon(core):
    shared, excl = anon(core, exclusive=False), anon(core)
    for cow in (None, True, False):
        assert core.gup_must_unshare(shared, PIN, cow) is True
        assert core.gup_must_unshare(shared, PIN | LONGTERM, cow) is True
        assert core.gup_must_unshare(excl, PIN, cow) is False
        # only a R/O pin unshares: a write breaks COW anyway, a GET is not a pin
        assert core.gup_must_unshare(shared, PIN | WRITE, cow) is False
        assert core.gup_must_unshare(shared, GET, cow) is False


def test_gup_must_unshare_file(core):
    f = file_folio(core)
    assert core.gup_must_unshare(f, PIN, None) is False
    assert core.gup_must_unshare(f, PIN | LONGTERM, None) is True   # no VMA: slow path decides
    assert core.gup_must_unshare(f, PIN | LONGTERM, True) is True   # COW mapping
    assert core.gup_must_unshare(f, PIN | LONGTERM, False) is False  # shared mapping


def test_gup_must_unshare_switches(core):
    shared = anon(core, exclusive=False)
    core.set_mutants(C.MUT_NO_UNSHARE)              # the slow path's switch
    assert core.gup_must_unshare(shared, PIN, True) is False
    assert core.gup_must_unshare(shared, PIN, None) is True
    core.set_mutants(C.MUT_FAST_NO_UNSHARE)         # GUP-fast's
    assert core.gup_must_unshare(shared, PIN, True) is True
    assert core.gup_must_unshare(shared, PIN, None) is False
    core.set_mutants(0)


def test_follow_range_asks_gup_must_unshare_and_honours_no_unshare(core):
    """The slow path's batch follow stops at a shared anon page for a R/O
    pin (the fault handler must unshare it), unless no_unshare is on."""
    shared = anon(core, exclusive=False)
    mm, addr = core.mm_new(), 0x400000
    core.pte_set(mm, addr, (shared << C.PAGE_SHIFT) | RO_PTE, C.LEVEL_PTE)
    core.mapcount_add(shared, 1)
    assert len(core.follow_range(0, mm, addr, 1, C.FOLLOW_PIN)) == 0
    core.set_mutants(C.MUT_NO_UNSHARE)
    got = core.follow_range(0, mm, addr, 1, C.FOLLOW_PIN)
    assert list(got) == [shared]
    core.gup_put(shared, 1, True)
    core.set_mutants(0)
    core.mm_destroy(0, mm)


# ---- can_follow_write_pte -----------------------------------------------------

def test_can_follow_write_pte(core):
    excl, shared, f = anon(core), anon(core, exclusive=False), file_folio(core)
    for pfn in (excl, shared, f, None):
        assert core.can_follow_write_pte(RW_PTE, pfn, WRITE, 0) is True
        assert core.can_follow_write_pte(RO_PTE, pfn, WRITE, PRIVATE_RO) is False  # no FORCE
    ok = WRITE | FORCE
    assert core.can_follow_write_pte(RO_PTE, excl, ok, PRIVATE_RO) is True   # COW broken
    assert core.can_follow_write_pte(RO_PTE, shared, ok, PRIVATE_RO) is False
    assert core.can_follow_write_pte(RO_PTE, f, ok, PRIVATE_RO) is False
    assert core.can_follow_write_pte(RO_PTE, None, ok, PRIVATE_RO) is False
    # FORCE never writes shared, read-only-for-good, or writable mappings
    for vm in (PRIVATE_RO | VM.SHARED, PRIVATE_RO | VM.MAYSHARE, PRIVATE_RO & ~VM.MAYWRITE,
               PRIVATE_RO | VM.WRITE):
        assert core.can_follow_write_pte(RO_PTE, excl, ok, int(vm)) is False, vm


def test_force_write_any_page_is_dirty_cow(core):
    shared, f = anon(core, exclusive=False), file_folio(core)
    core.set_mutants(C.MUT_FORCE_WRITE_ANY_PAGE)
    ok = WRITE | FORCE
    assert core.can_follow_write_pte(RO_PTE, shared, ok, PRIVATE_RO) is True
    assert core.can_follow_write_pte(RO_PTE, f, ok, PRIVATE_RO) is True
    # the VMA checks still hold
    assert core.can_follow_write_pte(RO_PTE, f, ok, PRIVATE_RO | int(VM.SHARED)) is False
    core.set_mutants(0)
    assert core.can_follow_write_pte(RO_PTE, f, ok, PRIVATE_RO) is False


def test_vm_bits_are_the_kernels():
    assert (C.VM_WRITE, C.VM_SHARED, C.VM_MAYWRITE, C.VM_MAYSHARE) == \
        (VM.WRITE, VM.SHARED, VM.MAYWRITE, VM.MAYSHARE)
    bits = [v for k, v in vars(C).items() if k.startswith("MUT_") and k != "MUT_ALL"]
    assert C.MUT_ALL == (max(bits) << 1) - 1 == sum(bits)


# ---- the C core never trusts Python ------------------------------------------

def test_every_value_is_bounds_checked(core):
    free = core.folio_alloc(0, 0)
    core.folio_put(free)                                   # a free frame
    for bad in (core.nr_frames, core.nr_frames + 12345, 2**62, free):
        for ask in (core.page_anon_exclusive, core.folio_is_longterm_pinnable,
                    core.folio_maybe_dma_pinned,
                    lambda p: core.gup_must_unshare(p, PIN, None),
                    lambda p: core.can_follow_write_pte(RO_PTE, p, WRITE | FORCE, PRIVATE_RO)):
            with pytest.raises(GupError) as ei:
                ask(bad)
            assert ei.value.errno == errno.EINVAL
    for bad, exc in ((-1, ValueError), (2**64, ValueError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            core.page_anon_exclusive(bad)
        with pytest.raises(exc):
            core.gup_must_unshare(1, bad, None)
    # the raw entry points check what the wrappers do not
    m = core._m
    assert lib.pg_gup_must_unshare(m, 1, PIN, 2) == -C.EINVAL
    assert lib.pg_gup_must_unshare(m, 1, PIN, -2) == -C.EINVAL
    assert lib.pg_can_follow_write_pte(m, RO_PTE, -2, WRITE, 0) == -C.EINVAL
    assert lib.pg_can_follow_write_pte(m, RO_PTE, 2**62, WRITE, 0) == -C.EINVAL
    assert lib.pg_folio_maybe_dma_pinned(m, 2**64 - 1) == -C.EINVAL
