"""pytest-benchmark suites (``python -m pytest bench/``): absolute times,
for tracking pygup against itself over time.  The ratios the issues ask for
come from ``pygup bench``, which measures everything in one run."""
import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup.tools.bench import LT_W, machine_for, mapped

PAGES = 1 << 14
RW = PROT.READ | PROT.WRITE


@pytest.fixture(scope="module")
def populated():
    m = machine_for(PAGES)
    p, a = mapped(m, PAGES)
    return m, p, a


def test_fast_pin_unpin(benchmark, populated):
    m, p, a = populated
    core, cpu = m._core, m.current_cpu()

    def once():
        core.gup_put_pages(core.gup_fast(cpu, p.mm.id, a, PAGES, LT_W, 1), True)

    benchmark(once)


def test_reference_fast_pin_unpin(benchmark, populated):
    from pygup.tools.reference import gup_fast_reference
    m, p, a = populated

    def once():
        for pfn in gup_fast_reference(m, p.mm, a, 1024, int(LT_W)):
            m._core.gup_put(pfn, 1, True)

    benchmark(once)


def test_slow_pin_with_fault_in(benchmark):
    def setup():
        m = machine_for(1024)
        return mapped(m, 1024, prefault=False), {}

    def once(p, a):
        ret, pages = p.mm.pin_user_pages(a, 1024, FOLL.WRITE)
        assert ret == 1024

    benchmark.pedantic(once, setup=setup, rounds=5)


def test_longterm_pin_with_migration(benchmark):
    def setup():
        m = Machine(memory="64MiB", movable="16MiB")
        p = m.spawn()
        a = p.mmap(512 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
        p.mm.get_user_pages(a, 512, FOLL.WRITE, pages=False)     # lands in ZONE_MOVABLE
        return (p, a), {}

    def once(p, a):
        ret, pages = p.mm.pin_user_pages(a, 512, FOLL.LONGTERM | FOLL.WRITE)
        assert ret == 512

    benchmark.pedantic(once, setup=setup, rounds=5)


def test_writeback_dirty_pages(benchmark):
    def setup():
        m = Machine(memory="64MiB", movable="8MiB")
        f = m.mount("ext4").create("f", 512 * 4096)
        p = m.spawn()
        a = p.mmap(512 * 4096, RW, MAP.SHARED, file=f)
        for i in range(512):
            p.write(a + i * 4096, i + 1)
        return (f,), {}

    benchmark.pedantic(lambda f: f.writeback(), setup=setup, rounds=5)


def test_fork_of_pinned_region(benchmark):
    def setup():
        m = machine_for(1024)
        p, a = mapped(m, 1024)
        ret, pages = p.mm.pin_user_pages(a, 1024, FOLL.WRITE)
        return (p,), {}

    benchmark.pedantic(lambda p: p.fork(), setup=setup, rounds=5)


def test_user_writes_through_tlb(benchmark, populated):
    m, p, a = populated

    def once():
        for i in range(256):
            p.write(a + i * 4096, i)

    benchmark(once)


def test_fuzz_operations(benchmark):
    from pygup.tools.fuzz import run_seed
    benchmark.pedantic(lambda: run_seed(1, 300, "6.5"), rounds=5)
