"""Every error is the promised kind (issue 15, items 8-12): the kernel's
errno for a bad address or range, ValueError / TypeError naming the
argument otherwise, checked before any work or allocation — never an
OverflowError from cffi, a MemoryError from a page array sized by a bad
count, an AttributeError, or an InvariantError for a caller's mistake."""
from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from pygup import FOLL, MAP, PROT, GupError, Machine, callers
from pygup.explain import explain
from pygup.flags import PAGE_SIZE
from pygup.tools.stress import run_stress, stress_params

RW = PROT.READ | PROT.WRITE


@pytest.fixture
def world(machine):
    p = machine.spawn()
    a = p.mmap(4 * PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 1)
    return machine, p, a


# -- 8: no OverflowError from cffi ---------------------------------------------

@pytest.mark.parametrize("order", [2**40, -1, 1, 8])
def test_alloc_folio_order(machine, order):
    with pytest.raises(ValueError, match="order"):
        machine.alloc_folio(order=order)


@pytest.mark.parametrize("pfn", [-1, 2**64, 2**40])
def test_folio_out_of_range_is_einval(machine, pfn):
    with pytest.raises(GupError) as e:
        machine.folio(pfn)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("memory", ["9" * 30 + "GiB", 2**70, "\u0666\u0664MiB", "６４MiB"])
def test_machine_memory(memory):
    with pytest.raises(ValueError, match="memory"):
        Machine(memory=memory, movable="0MiB")


@pytest.mark.parametrize("kw,name", [
    ({"schedule": [2**40]}, "schedule"), ({"schedule": [7, 7, 9]}, "schedule"),
    ({"schedule": [-1]}, "schedule"), ({"spin_limit": -5}, "spin_limit"),
    ({"spin_limit": 2**64}, "spin_limit"), ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"), ({"timeout": float("inf")}, "timeout"),
    ({"timeout": 0}, "timeout")])
def test_run_concurrently_arguments(machine, kw, name):
    with pytest.raises(ValueError, match=name):
        machine.run_concurrently([lambda m: 1, lambda m: 2], **kw)


def test_run_concurrently_points_must_be_names(machine):
    with pytest.raises(TypeError, match="points"):
        machine.run_concurrently([lambda m: 1], points=[None])


@pytest.mark.parametrize("kw,name", [
    ({"seconds": float("inf")}, "seconds"), ({"seconds": float("nan")}, "seconds"),
    ({"seed": 2**64}, "seed"), ({"max_pin_pages": 2**31}, "max_pin_pages"),
    ({"hold_spins": 2**32}, "hold_spins"), ({"threads": {"pinners": 1.7}}, "pinners"),
    ({"threads": {"pinners": -1}}, "pinners")])
def test_stress_params(kw, name):
    with pytest.raises(ValueError, match=name):
        stress_params("unmap", **kw)


def test_run_stress_bad_knob_is_refused_before_the_run():
    with pytest.raises(ValueError, match="max_pin_pages"):
        run_stress({"memory": "128MiB"}, seconds=0.05, max_pin_pages=2**31)


def test_pages_index(world):
    m, p, a = world
    ret, pages = p.mm.pin_user_pages_fast(a, 1, 0)
    with pytest.raises(IndexError, match="page index 18446744073709551616 out of range"):
        pages[2**64]
    with pytest.raises(IndexError, match="out of range for 1 pages"):
        pages.read(1)
    with pytest.raises(TypeError, match="page index"):
        pages["0"]
    # numpy integers are integers
    assert pages.read(np.int64(0)) == 1 and pages[np.uint8(0)] == pages[0]
    p.mm.unpin_user_pages(pages)


def test_numpy_integers_into_callers(world):
    m, p, a = world
    assert callers.o_direct_write(p, np.int64(a), np.int64(PAGE_SIZE)) == PAGE_SIZE
    assert callers.vmsplice(p, np.uint64(a), np.int32(PAGE_SIZE)) == PAGE_SIZE
    assert callers.proc_mem_read(p, np.int64(a)) == 1
    ret, pages = p.mm.get_user_pages_fast(np.int64(a), np.int64(1), np.int64(0))
    assert ret == 1
    p.mm.put_page(pages)


# -- 9: the range is checked before any page array exists ----------------------

HUGE = 2**34                              # pages: a 128 GiB pages array


@pytest.mark.parametrize("call", [
    lambda p: p.mm.get_user_pages_fast(0x10000, HUGE)[0],
    lambda p: p.mm.pin_user_pages_fast(0x10000, HUGE, FOLL.WRITE)[0],
    lambda p: p.mm.get_user_pages(0x10000, HUGE)[0],
    lambda p: p.mm.pin_user_pages_remote(0x10000, HUGE)[0],
    lambda p: explain(p.mm, 0x10000, HUGE, 0, api="pin_user_pages_fast").ret,
    lambda p: explain(p.mm, 0x10000, HUGE, 0).ret,
    lambda p: callers.rdma_umem_get(p, 0x10000, 2**46),
    lambda p: callers.vfio_pin(p, 0x10000, 2**46),
    lambda p: callers.o_direct_read(p, 0x10000, 2**46),
    lambda p: callers.o_direct_write(p, 0x10000, 2**46),
    lambda p: callers.vmsplice(p, 0x10000, 2**46),
])
def test_huge_counts_cost_no_memory(machine, call):
    p = machine.spawn()
    assert call(p) in (-errno.EFAULT, -errno.ENOMEM)


@pytest.mark.parametrize("call", [
    lambda p: p.mm.get_user_pages_fast(2**64 - PAGE_SIZE, 2)[0],
    lambda p: callers.rdma_umem_get(p, 2**64 - PAGE_SIZE, 2 * PAGE_SIZE),
    lambda p: callers.vfio_pin(p, 2**64 - PAGE_SIZE, 2 * PAGE_SIZE),
    lambda p: callers.o_direct_read(p, 2**64 - PAGE_SIZE, 2 * PAGE_SIZE),
    lambda p: callers.vmsplice(p, 2**64 - PAGE_SIZE, 2 * PAGE_SIZE),
])
def test_wrapping_ranges_are_the_kernels_errno(machine, call):
    p = machine.spawn()
    assert call(p) in (-errno.EOVERFLOW, -errno.EINVAL, -errno.EFAULT)


def test_huge_pin_over_a_big_mapping_is_batched(machine):
    # a mapping as large as the request: the walk must not size its buffer
    # by nr_pages.  PROT_NONE: both paths stop at the first page at once.
    p = machine.spawn()
    a = p.mmap(HUGE * PAGE_SIZE, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.mm.pin_user_pages_fast(a, HUGE, 0)[0] == -errno.EFAULT
    with pytest.raises(GupError) as e:
        p.pin(a, HUGE * PAGE_SIZE, fast=True)
    assert e.value.errno == errno.EFAULT


# -- 10: no AttributeError, the right IndexError, no InvariantError for a caller bug

@pytest.mark.parametrize("fn", [
    lambda: callers.vfio_pin(None, 0x10000, PAGE_SIZE),
    lambda: callers.rdma_umem_get("p", 0x10000, PAGE_SIZE),
    lambda: callers.io_uring_register_buffers(3, 0x10000, PAGE_SIZE),
    lambda: callers.o_direct_read(None, 0x10000, PAGE_SIZE),
    lambda: callers.proc_mem_write(None, 0x10000, 1),
    lambda: callers.process_vm_readv(object(), 0x10000),
    lambda: callers.pipe_read(None),
    lambda: callers.vfio_unpin(None),
])
def test_callers_need_a_process(fn):
    with pytest.raises(TypeError, match="Process"):
        fn()


def test_cpu_blocks_may_end_out_of_order(machine):
    c0, c1 = machine.cpu(0), machine.cpu(1)
    c0.__enter__()
    c1.__enter__()
    assert machine.current_cpu() == 1
    c0.__exit__(None, None, None)
    assert machine.current_cpu() == 1
    c1.__exit__(None, None, None)
    # both CPUs are free again for other threads
    got = []
    t = threading.Thread(target=lambda: got.append(machine.current_cpu()))
    t.start()
    t.join()
    assert got and got[0] in (0, 1, 2, 3)


def test_writing_through_a_read_only_pin_of_the_zero_page_is_a_caller_error(machine):
    p = machine.spawn()
    a = p.mmap(PAGE_SIZE, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    ret, pages = p.mm.pin_user_pages(a, 1, 0)
    assert ret == 1 and machine.folio(pages[0]).flags & machine.folio(0).flags.ZERO
    with pytest.raises(ValueError, match="zero page.*FOLL_WRITE"):
        pages.write(0, 5)
    p.mm.unpin_user_pages(pages)
    machine.check()


# -- 11: no silent acceptance ---------------------------------------------------

def test_make_dirty_must_be_a_bool(world):
    m, p, a = world
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE)
    with pytest.raises(TypeError, match="make_dirty"):
        p.mm.unpin_user_pages_dirty_lock(pages, "no")
    assert not pages.released
    p.mm.unpin_user_pages_dirty_lock(pages, False)


def test_file_of_another_machine_is_refused_up_front(machine):
    other = Machine(memory="64MiB", movable="0MiB")
    f = other.mount("tmpfs").create("f", PAGE_SIZE)
    free = other.stats()["nr_free_normal"] + other.stats()["nr_free_movable"]
    p = machine.spawn()
    with pytest.raises(ValueError, match="another Machine"):
        p.mmap(PAGE_SIZE, RW, MAP.SHARED, file=f)
    assert not list(p.vmas())
    assert other.stats()["nr_free_normal"] + other.stats()["nr_free_movable"] == free


# -- 12: one CPU per thread, said where users look --------------------------------

def test_too_many_threads_are_told_how_many_cpus_to_ask_for():
    m = Machine(memory="64MiB", movable="0MiB", cpus=2)
    m.spawn()                                   # the main thread takes CPU 0
    hold, done = threading.Event(), threading.Event()

    def second():
        m.current_cpu()
        hold.set()
        done.wait(30)
    t = threading.Thread(target=second, daemon=True)
    t.start()
    assert hold.wait(30)
    out = []

    def third():
        try:
            m.spawn()
        except GupError as e:
            out.append(e)
    t3 = threading.Thread(target=third)
    t3.start()
    t3.join(30)
    done.set()
    t.join(30)
    assert out and out[0].errno == errno.EBUSY
    assert "cpus=3" in str(out[0]) and "machine.cpu(k)" in str(out[0])
    assert "cpus=" in Machine.__doc__ and "thread" in Machine.__doc__
