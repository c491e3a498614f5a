"""BUGS #2 — the seed's own review history: each a mistake in one of the
6.5 checks, caught on the list before it merged, re-planted as a switch.

  v7  the GUP-fast allowed-check inverted                 whitelist_inverted
  v7  FOLL_PIN *or* FOLL_LONGTERM instead of *and*        pin_or_longterm
  v8  MAP_PRIVATE not excluded from the check             private_not_excluded
  v8  a NULL (truncated) mapping passes the fast check    null_mapping_ok
  v8  the fast check done before the PTE/PMD re-check     whitelist_before_recheck

Found by: the reviewers of Lorenzo Stoakes' series (David Hildenbrand, Jan
Kara, Jason Gunthorpe, John Hubbard, Christoph Hellwig); the fixed forms
are writable_file_mapping_allowed() and folio_fast_pin_allowed() as merged
in 6.5.

Two of them let a pin through that 6.5 forbids (whitelist_inverted: bug 1's
damage comes back through GUP-fast; null_mapping_ok: a long-term writable
pin of a truncated ext4 folio), one reads a folio that may already belong
to someone else (whitelist_before_recheck), and two refuse pins 6.5 allows
(pin_or_longterm, private_not_excluded): no safety invariant sees those,
the damage is the refusal itself — a process_vm_writev or an RDMA
registration that fails on a kernel that should take it (SPEC §2.4).

The two race windows run under the deterministic scheduler with their
schedules written out; the address space of each is the one below (one
page, one CPU per side):

    process P                     page tables (P's mm)
    a +------------------+        PGD -> PUD -> PMD -> PTE table
      | one 4 KiB page   |                             [a] -> F
    a+4K ----------------+
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, InvariantError, Machine
from pygup._native import C

RW = PROT.READ | PROT.WRITE
P = 4096
LT_WRITE = FOLL.LONGTERM | FOLL.WRITE           # + FOLL_PIN from pin_user_pages*


def machine(mutants, **kw) -> Machine:
    # no ZONE_MOVABLE: a long-term pin may stay where it is, so GUP-fast's
    # result is the call's result (no migration behind it)
    return Machine(memory="64MiB", movable="0MiB", cpus=2, mutants=mutants, **kw)


def ext4_page(m, flags=MAP.SHARED):
    f = m.mount("ext4").create("f", P)
    p = m.spawn()
    a = p.mmap(P, RW, flags, file=f)
    p.write(a, 0x1111)                   # faulted in, page_mkwrite, dirty
    return f, p, a


# ---- v7: whitelist_inverted -------------------------------------------------
#
#   1. P writes a (ext4, MAP_SHARED): the PTE is present and writable
#   2. pin_user_pages_fast(a, FOLL_LONGTERM | FOLL_WRITE): GUP-fast walks
#      the PTE, grabs F, asks folio_fast_pin_allowed(): ext4 is dirty-
#      tracked -> false -> drop, fall back; the slow path refuses (-EFAULT).
#      Inverted, the answer is "allowed": F is pinned long-term, writable.
#   3. writeback cleans F; 4. the device writes F through the pin: bug 1.
# Detected: the pin is granted, and after writeback the device's write
# changes a clean folio that had no page_mkwrite (invariant 3).

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_whitelist_inverted_lets_gup_fast_pin_ext4(buggy):
    m = machine({"whitelist_inverted"} if buggy else ())
    f, p, a = ext4_page(m)
    ret, pages = p.mm.pin_user_pages_fast(a, 1, LT_WRITE)
    if not buggy:
        assert ret == -errno.EFAULT
        m.check()
        return
    assert ret == 1
    f.writeback()
    pages.write(0, 0x2222)
    folio = m.folio(pages[0])
    assert folio.content == 0x2222 and not folio.dirty
    assert not folio.flags & folio.flags.MKWRITE
    p.mm.unpin_user_pages(pages)
    m.check()


def test_whitelist_inverted_reproducer(reproducer):
    data, planted, fixed = reproducer("bug02_whitelist_inverted")
    assert planted is not None and planted.invariant == "policy"
    assert fixed is None


# ---- v7: pin_or_longterm ----------------------------------------------------
#
#   process_vm_writev() into P's ext4 MAP_SHARED page: a short-term
#   pin_user_pages_remote(FOLL_WRITE).  6.5 allows it (SPEC §2.4,
#   "MAP_SHARED ext4 RW, short-term pin: allowed": the writer dirties the
#   folio through set_page_dirty_lock right away, write-notify is not
#   bypassed for long).  FOLL_PIN-or-FOLL_LONGTERM refuses it.
# Detected: the write does not happen (-EFAULT); with the fix it lands.

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_pin_or_longterm_refuses_short_term_pins(buggy):
    m = machine({"pin_or_longterm"} if buggy else ())
    f, p, a = ext4_page(m)
    ret, pages = p.mm.pin_user_pages_remote(a, 1, FOLL.WRITE)
    if buggy:
        assert ret == -errno.EFAULT and p.read(a) == 0x1111
    else:
        assert ret == 1
        pages.write(0, 0x2222)
        p.mm.unpin_user_pages_dirty_lock(pages, True)
        assert p.read(a) == 0x2222
    m.check()


# ---- v8: private_not_excluded -----------------------------------------------
#
#   An RDMA registration (pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE))
#   of an ext4 MAP_PRIVATE page.  A private mapping's writes go to anon
#   COW copies: nothing reaches the file, so 6.5 allows it (the pin COWs
#   and holds P's private copy).  Not excluding MAP_PRIVATE refuses it.
# Detected: the registration fails; with the fix the device holds P's
# private anon copy and the file is untouched.

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_private_not_excluded_refuses_private_mappings(buggy):
    m = machine({"private_not_excluded"} if buggy else ())
    f, p, a = ext4_page(m, MAP.PRIVATE)
    ret, pages = p.mm.pin_user_pages(a, 1, LT_WRITE)
    if buggy:
        assert ret == -errno.EFAULT
    else:
        assert ret == 1 and m.folio(pages[0]).mapping == "anon"
        pages.write(0, 0x2222)
        assert p.read(a) == 0x2222 and m.folio(f.cached(0)).content == 0
        p.mm.unpin_user_pages(pages)
    m.check()


# ---- v8: null_mapping_ok (a race) -------------------------------------------
#
# folio_fast_pin_allowed() must refuse a folio whose ->mapping is NULL: it
# was truncated, and the fast path cannot tell what it was; the slow path,
# which sees the VMA, decides.  Broadcast TLB flushes (arm64): with IPIs the
# truncate's unmap would wait for CPU 0's IRQs-off walk, and the mapping
# would never be cleared under it.
#
#     CPU 0: pin_user_pages_fast(a,        CPU 1: ftruncate(f, 0)
#            WRITE|LONGTERM), ext4 page F
#     walk, grab F, re-check the PTE: ok
#     -- parks at fast_rechecked --
#                                          unmap_mapping_range: zap a,
#                                          broadcast flush (no wait)
#                                          delete F from the page cache:
#                                          F->mapping = NULL
#     folio_fast_pin_allowed: mapping NULL
#       -> refuse, fall back (the fix): the slow path finds no page past
#          EOF / refuses ext4 -> error
#       / switch on: "not a file" -> pinned
#
# Detected: GUP-fast granted a FOLL_LONGTERM|FOLL_WRITE pin on a page that
# is truncated and no longer mapped at a.
# Schedule: [0, 1] with the point fast_rechecked.

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_null_mapping_ok_gup_fast_vs_truncate(buggy):
    m = machine({"null_mapping_ok"} if buggy else (), tlb_flush="broadcast")
    f, p, a = ext4_page(m)
    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, LT_WRITE),
                              lambda m: f.truncate(0)],
                             schedule=[0, 1], points={"fast_rechecked"})
    ret, pages = run.results[0]
    if buggy:
        assert ret == 1
        assert m.folio(pages[0]).mapping == "none" and p.mm.pte(a).level == 0
        p.mm.unpin_user_pages(pages)
    else:
        assert ret < 0
    m.check()


# ---- v8: whitelist_before_recheck (a race) ------------------------------------
#
# Between GUP-fast's PTE read and its grab the page may be unmapped, freed
# and reused (nothing holds that off once TLB flushes do not wait for
# IRQs-off CPUs).  "Add unless zero" succeeds on the reused folio; only the
# re-check proves it is still the page mapped at a.  Reading ->mapping
# before that reads whatever the new owner keeps there: for a slab page,
# not a mapping at all.
#
#     CPU 0: pin_user_pages_fast(a,        CPU 1: munmap(a); a kernel
#            WRITE|LONGTERM), anon page F         allocation reuses F
#     IRQs off; read PTE[a] -> F
#     -- parks at fast_pte_read --
#                                          zap + broadcast flush; F freed;
#                                          F allocated again as PG_slab
#     grab F (refcount 1: succeeds)
#     re-check: PTE[a] none -> drop (the fix)
#       / switch on: the whitelist first reads a slab page's "mapping"
#
# Detected: the whitelist's "GUP-fast found slab folio" check (an
# InvariantError out of the fast path).
# Schedule: [0, 1] with the point fast_pte_read.

@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_whitelist_before_recheck_reads_reused_folio(buggy):
    m = machine({"whitelist_before_recheck"} if buggy else (), tlb_flush="broadcast")
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1111)
    F = p.mm.pte(a).pfn

    def munmap_and_reuse(m):
        p.munmap(a, P)
        new = m.alloc_folio(0, movable=False)
        m._core.flags_update(new, C.F_SLAB, 0)        # a slab page now
        return new

    run = m.run_concurrently([lambda m: p.mm.pin_user_pages_fast(a, 1, LT_WRITE),
                              munmap_and_reuse],
                             schedule=[0, 1], points={"fast_pte_read"})
    assert run.results[1] == F                         # the frame was reused
    err = run.raised(0)
    if buggy:
        assert isinstance(err, InvariantError) and "slab folio" in str(err)
    else:
        assert err is None and run.results[0][0] == -errno.EFAULT
    m._core.flags_update(F, 0, C.F_SLAB)               # the slab frees its page
    m._core.folio_put(F)
    m.check()
