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
