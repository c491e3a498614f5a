"""BUGS #10 — refcount overflow by repeated pins, and the zero page.

A small folio's pins live in its refcount (GUP_PIN_COUNTING_BIAS = 1024
each), so about two million pins overflow a 32-bit count; pins must then
fail cleanly.  The zero page is never counted.  Re-planted: unpin_no_bias
(unpin drops 1 instead of the bias) — the refcount audit finds the leak.
"""
from pygup import MAP, PROT, Machine


def test_unpin_without_bias(reproducer):
    data, planted, fixed = reproducer("bug10_unpin_no_bias")
    assert planted is not None and planted.invariant == "refcount-balance"
    assert fixed is None


def test_pins_fail_cleanly_near_the_limit():
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    pfn = p.mm.pte(a).pfn
    core = m._core
    n = 0
    while core.try_grab_page(pfn, True) == 0:
        n += 1
    assert n == (2**31 - 1 - 1) // 1024                      # then -ENOMEM, no wrap
    assert m.folio(pfn).refcount == 1 + n * 1024 and m.folio(pfn).refcount > 0
    assert p.mm.pin_user_pages(a, 1, 0)[0] == -12             # the GUP call fails cleanly
    core.gup_put(pfn, n, True)
    assert m.folio(pfn).refcount == 1


def test_zero_page_is_never_counted():
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.read(a) == 0                                      # maps the zero page
    before = m.folio(0).refcount
    ret, pages = p.mm.pin_user_pages_fast(a, 1, 0)
    assert ret == 1 and pages[0] == 0 and m.folio(0).refcount == before
    p.mm.unpin_user_pages(pages)
    assert m.folio(0).refcount == before
