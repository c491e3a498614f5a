"""BUGS #10 — refcounts under pins: the pin bias, overflow by repeated pins,
and the zero page.

A small folio's FOLL_PIN pins live in its refcount: each adds
GUP_PIN_COUNTING_BIAS (1024), so folio_maybe_dma_pinned() is "refcount >=
1024" (John Hubbard's pin_user_pages() series, 5.7/5.8).  Three ways to get
it wrong, each of which the kernel has had to defend against:

* unpin must drop exactly what pin added (unpin_user_page() ->
  gup_put_folio(FOLL_PIN)).  Re-planted as unpin_no_bias: unpin drops 1.
      1. P writes a: F mapped, refcount 1 (the PTE's)
      2. pin_user_pages_fast(a, WRITE): refcount 1 + 1024
      3. unpin_user_pages: 1 (fix) / 1024 (switch: F still "pinned")
      4. munmap(a): F freed (fix) / refcount 1023: F leaks, and stays
         folio_maybe_dma_pinned() for ever (fork copies it, migration
         refuses it)
  Detected: F is not freed by the munmap, the free-frame count does not
  come back, and F still reads as DMA-pinned.

* about two million pins overflow a 32-bit count (the page refcount
  overflow class of bugs, CVE-2019-11487 "fs: prevent page refcount
  overflow in pipe_buf_get", Jann Horn; try_grab_folio()'s overflow
  check): a pin that would pass the limit must fail cleanly (-ENOMEM), the
  count never wraps.

* the shared zero page is never counted (is_zero_folio() in
  try_grab_folio() and gup_put_folio(), 6.5), or millions of read-only pins
  of zero-filled memory would overflow the one page everybody maps.

    process P
    a +----------------+
      | anon, RW, 4 KiB | PTE -> F  (or, never written: -> the zero page)
    a+4K --------------+
"""
import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine

RW = PROT.READ | PROT.WRITE
P = 4096


def machine(mutants=()):
    return Machine(memory="64MiB", movable="0MiB", cpus=2, mutants=mutants)


@pytest.mark.parametrize("buggy", [False, True], ids=["fixed", "planted"])
def test_unpin_without_bias_leaks_the_page(buggy):
    m = machine({"unpin_no_bias"} if buggy else ())
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)                                                # 1
    F = p.mm.pte(a).pfn
    assert m.folio(F).refcount == 1
    ret, pages = p.mm.pin_user_pages_fast(a, 1, FOLL.WRITE)      # 2
    assert ret == 1 and m.folio(F).refcount == 1 + 1024
    p.mm.unpin_user_pages(pages)                                 # 3
    assert m.folio(F).maybe_dma_pinned is buggy
    free = m.stats()["nr_free_normal"]
    p.munmap(a, P)                                               # 4
    if buggy:
        assert m.folio(F).refcount == 1023 and m.stats()["nr_free_normal"] == free
    else:
        assert m.folio(F).refcount == 0 and m.stats()["nr_free_normal"] == free + 1
        m.check()


def test_unpin_without_bias_reproducer(reproducer):
    data, planted, fixed = reproducer("bug10_unpin_no_bias")
    assert planted is not None and planted.invariant == "refcount-balance"
    assert fixed is None


def test_pins_fail_cleanly_near_the_limit():
    m = machine()
    p = m.spawn()
    a = p.mmap(P, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    F = p.mm.pte(a).pfn
    core = m._core
    n = 0                     # try_grab_page() until it refuses (C speed)
    while core.try_grab_page(F, True) == 0:
        n += 1
    assert n == (2**31 - 1 - 1) // 1024                          # then -ENOMEM, no wrap
    assert m.folio(F).refcount == 1 + n * 1024 and m.folio(F).refcount > 0
    assert p.mm.pin_user_pages(a, 1, 0)[0] == -errno.ENOMEM       # the GUP call fails cleanly
    core.gup_put(F, n, True)
    assert m.folio(F).refcount == 1
    p.exit()
    m.check()


def test_zero_page_is_never_counted():
    m = machine()
    p = m.spawn()
    a = p.mmap(P, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.read(a) == 0                                        # maps the zero page
    zero = p.mm.pte(a).pfn
    assert m.folio(zero).flags & m.folio(zero).flags.ZERO
    before = m.folio(zero).refcount
    for entry in (p.mm.pin_user_pages_fast, p.mm.pin_user_pages):
        ret, pages = entry(a, 1, 0)
        assert ret == 1 and pages[0] == zero and m.folio(zero).refcount == before
        p.mm.unpin_user_pages(pages)
        assert m.folio(zero).refcount == before
    m.check()
