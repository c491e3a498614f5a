"""TLB shootdown with real threads on two emulated CPUs: writeback's
folio_mkclean must shoot down the writer's cached writable entry, so its next
write faults and notifies the file system."""
import threading

from pygup import MAP, PROT


def test_writeback_shoots_down_other_cpus_tlb(machine):
    fs = machine.mount("ext4")
    f = fs.create("f", 4096)
    p = machine.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    wrote_once, cleaned, done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def writer():
        with machine.cpu(1):
            p.write(a, 1)
            seen["tlb_before"] = machine._core.tlb_probe(1, p.mm.id, a)
            wrote_once.set()
            cleaned.wait(10)
            seen["tlb_after"] = machine._core.tlb_probe(1, p.mm.id, a)
            p.write(a, 2)           # must fault: the PTE is read-only now
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert wrote_once.wait(10)
    with machine.cpu(0):
        assert f.writeback() == 1
    cleaned.set()
    assert done.wait(10)
    t.join()
    assert seen == {"tlb_before": True, "tlb_after": False}
    assert fs.stats()["page_mkwrite"] == 2
    assert machine.folio(p.mm.pte(a).pfn).dirty
    with machine.cpu(0):
        machine.writeback()
    assert f.disk(0) == 2 and fs.warnings == []


def test_irqs_off_holds_off_shootdown(machine):
    """A CPU with IRQs disabled (as GUP-fast walks) delays writeback's
    shootdown — and with it writeback itself — until it enables them."""
    fs = machine.mount("ext4")
    f = fs.create("f", 4096)
    p = machine.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    with machine.cpu(1):
        p.write(a, 1)               # CPU 1 now has the mm active
    inside, release = threading.Event(), threading.Event()
    finished = threading.Event()

    def walker():
        with machine.cpu(1), machine.irqs_off():
            inside.set()
            release.wait(10)

    def flusher():
        with machine.cpu(2):        # the main thread holds CPU 0
            f.writeback()
        finished.set()

    t1 = threading.Thread(target=walker)
    t1.start()
    assert inside.wait(10)
    t2 = threading.Thread(target=flusher)
    t2.start()
    assert not finished.wait(0.3)   # waiting for CPU 1's acknowledgement
    release.set()
    assert finished.wait(10)
    t1.join()
    t2.join()
    assert f.disk(0) == 1
    assert machine.stats()["ipis_sent"] >= 1


def test_sleeping_op_with_irqs_off_is_refused(machine):
    import pytest
    p = machine.spawn()
    with machine.irqs_off():
        with pytest.raises(RuntimeError, match="IRQs disabled"):
            p.mmap(4096, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)


def test_mkclean_without_shootdown_is_a_write_notify_bypass():
    """mkclean_no_flush: folio_mkclean write-protects the PTE but leaves the
    writer's TLB entry; the next write goes through it to a clean folio
    without page_mkwrite.  The MMU's invariant-3 check catches it; with the
    shootdown in place the write faults and notifies instead."""
    import pytest

    from pygup import InvariantError, Machine
    for mutants in ((), ("mkclean_no_flush",)):
        m = Machine(memory="64MiB", movable="8MiB", mutants=mutants)
        fs = m.mount("ext4")
        f = fs.create("f", 4096)
        p = m.spawn()
        a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
        p.write(a, 1)
        f.writeback()
        if mutants:
            with pytest.raises(InvariantError, match="write-notify bypass"):
                p.write(a, 2)
        else:
            p.write(a, 2)
            assert fs.stats()["page_mkwrite"] == 2


def test_write_through_stale_tlb_to_freed_frame_is_caught():
    """A PTE cleared and its frame freed without a shootdown: the old TLB
    entry would write into freed memory.  The core's own zap always flushes,
    so this plants the bug by hand: clear the PTE, drop the page, no flush."""
    import pytest

    from pygup import InvariantError, Machine
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    pfn = p.mm.pte(a).pfn
    m._core.pte_clear(p.mm.id, a)               # no flush_tlb_range()
    m._core.mapcount_add(pfn, -1)
    m._core.folio_put(pfn, 1)                   # the frame is free now
    with pytest.raises(InvariantError, match="stale TLB entry to freed frame"):
        p.write(a, 2)


# ---- the TLB audit (pg_audit_tlbs): between operations no CPU caches a
# translation the page tables no longer give -------------------------------

def _tlb_world():
    from pygup import Machine
    m = Machine(memory="64MiB", movable="8MiB", cpus=2)
    p = m.spawn()
    a = p.mmap(2 * 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    with m.cpu(1):
        p.write(a, 1)                          # CPU 1: a writable, dirty entry
        p.read(a + 4096)                       # and a read-only one (the zero page)
    return m, p, a


def test_tlb_audit_finds_nothing_after_the_models_own_operations():
    m, p, a = _tlb_world()
    p.mprotect(a, 2 * 4096, PROT.READ)         # a downgrade: flushed
    assert m._core.audit_tlbs() == (0, [])
    p.munmap(a, 2 * 4096)
    assert m._core.audit_tlbs() == (0, [])
    m.check()


def test_tlb_audit_names_an_entry_whose_pte_was_cleared_without_a_flush():
    m, p, a = _tlb_world()
    core = m._core
    pfn = p.mm.pte(a).pfn
    core.pte_clear(p.mm.id, a)                  # no flush_tlb_range()
    n, bad = core.audit_tlbs()
    assert n == 1 and bad[0]["cpu"] == 1 and bad[0]["addr"] == a and bad[0]["pfn"] == pfn
    assert bad[0]["leaf"] == 0 and bad[0]["writable"] and bad[0]["dirty"]
    core.flush_tlb_range(0, p.mm.id, a, a + 4096)
    assert core.audit_tlbs() == (0, [])


def test_tlb_audit_holds_a_write_serving_entry_to_a_writable_dirty_pte():
    """An entry that serves writes without a walk (writable and dirty) is
    stale once the PTE is clean or read-only (the write would go through
    unseen: the seed's bug); one with fewer rights than its PTE is not."""
    from pygup._native import C
    m, p, a = _tlb_world()
    core = m._core
    for clear in (C.PTE_DIRTY, C.PTE_WRITE):
        core.pte_modify(p.mm.id, a, clear, 0)   # no flush
        n, bad = core.audit_tlbs()
        assert n == 1 and bad[0]["addr"] == a and bad[0]["writable"] and bad[0]["dirty"]
        core.pte_modify(p.mm.id, a, 0, clear)   # the rights back: coherent again
        assert core.audit_tlbs() == (0, [])
    # the zero page's read-only entry against a PTE that gained rights: fine
    core.pte_modify(p.mm.id, a + 4096, 0, C.PTE_ACCESSED)
    assert core.audit_tlbs() == (0, [])
    assert core.audit_tlbs(0) == (0, [])


def test_tlb_audit_checks_its_argument():
    import pytest

    from pygup import Machine
    m = Machine(memory="16MiB")
    for bad in (-1, 1025, True, 1.5, "4"):
        with pytest.raises(ValueError):
            m._core.audit_tlbs(bad)
