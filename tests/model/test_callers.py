"""The GUP callers with the flags they really use, and what their syscalls
return."""
import errno

import pytest

from pygup import MAP, PROT, Machine
from pygup import callers as c

RW = PROT.READ | PROT.WRITE


@pytest.fixture
def m():
    return Machine(memory="64MiB", movable="8MiB")


def anon(m, n=4):
    p = m.spawn()
    a = p.mmap(n * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    for i in range(n):
        p.write(a + i * 4096, 100 + i)
    return p, a


def ext4(m, prot=RW, flags=MAP.SHARED):
    f = m.mount("ext4").create("f", 4 * 4096)
    p = m.spawn()
    a = p.mmap(4 * 4096, prot, flags, file=f)
    return p, a, f


def test_io_uring_validation(m):
    p, a = anon(m)
    assert c.io_uring_register_buffers(p, 0, 0) == 0
    assert c.io_uring_register_buffers(p, 0, 4096) == -errno.EFAULT
    assert c.io_uring_register_buffers(p, a, (1 << 30) + 1) == -errno.EFAULT
    assert c.io_uring_register_buffers(p, a, 8 * 4096) == -errno.EFAULT   # past the VMA
    assert c.io_uring_unregister_buffers(p) == -errno.ENXIO
    assert c.io_uring_register_buffers(p, a, 4 * 4096) == 0
    pfn = p.mm.pte(a).pfn
    assert m.folio(pfn).maybe_dma_pinned
    assert c.io_uring_unregister_buffers(p) == 0
    assert not m.folio(pfn).maybe_dma_pinned


def test_rdma_umem(m):
    p, a = anon(m)
    assert c.rdma_umem_get(p, a, 4 * 4096, writable=True) == 0
    assert m.folio(p.mm.pte(a).pfn).maybe_dma_pinned
    assert c.rdma_umem_release(p) == 4
    q, b, _ = ext4(m)
    assert c.rdma_umem_get(q, b, 4096, writable=True) == -errno.EFAULT
    assert c.rdma_umem_get(q, b, 4096, writable=False) == 0       # read-only MR is fine


def test_vfio(m):
    p, a = anon(m)
    assert c.vfio_pin(p, a, 4 * 4096) == 4
    assert c.vfio_unpin(p) == 4
    q, b, _ = ext4(m)
    assert c.vfio_pin(q, b, 4096) == -errno.EFAULT


def test_o_direct_is_short_term_and_allowed(m):
    """O_DIRECT pins are short-term: 6.5 still allows them on ext4 (the cover
    letter calls this 'fundamentally broken' but leaves it)."""
    p, a, f = ext4(m)
    assert c.o_direct_read(p, a, 2 * 4096, value=0x77) == 2 * 4096
    assert p.read(a) == 0x77 and p.read(a + 4096) == 0x77
    assert c.o_direct_write(p, a, 100) == 100
    m.writeback()
    assert f.disk(0) == 0x77 and f.fs.warnings == []


def test_proc_mem_force_write_private_breaks_cow(m):
    """Dirty COW's lesson: a forced write to a private read-only file mapping
    lands in a private copy, never in the file."""
    p, a, f = ext4(m, prot=PROT.READ, flags=MAP.PRIVATE)
    assert c.proc_mem_read(p, a) == 0
    assert c.proc_mem_write(p, a, 0xBAD) == 8
    assert p.read(a) == 0xBAD
    m.writeback()
    assert f.disk(0) == 0 and f.cached(0) is not None and m.folio(f.cached(0)).content == 0


def test_proc_mem_force_write_shared_readonly_refused(m):
    p, a, f = ext4(m, prot=PROT.READ, flags=MAP.SHARED)
    assert c.proc_mem_write(p, a, 1) == -errno.EIO
    assert c.proc_mem_read(p, a) == 0


def test_process_vm_rw(m):
    p, a = anon(m)
    assert c.process_vm_writev(p, a + 4096, 55) == 8
    assert p.read(a + 4096) == 55 and c.process_vm_readv(p, a + 4096) == 55
    assert c.process_vm_readv(p, 0x1000) == -errno.EFAULT
    ro = p.mmap(4096, PROT.READ, MAP.PRIVATE | MAP.ANONYMOUS)
    assert c.process_vm_writev(p, ro, 1) == -errno.EFAULT


def test_vmsplice_keeps_references(m):
    p, a = anon(m, 2)
    pfn = p.mm.pte(a).pfn
    assert c.vmsplice(p, a, 2 * 4096) == 2 * 4096
    assert m.folio(pfn).refcount == 2 and not m.folio(pfn).maybe_dma_pinned
    assert c.pipe_read(p) == [100, 101]
    assert m.folio(pfn).refcount == 1


def test_exit_releases_held_pages(m):
    p, a = anon(m)
    assert c.io_uring_register_buffers(p, a, 4096) == 0
    pfn = p.mm.pte(a).pfn                 # migrated out of ZONE_MOVABLE first
    assert m.folio(pfn).refcount > 1
    base = m.stats()
    p.exit()
    assert m.stats()["pins_released"] == base["pins_released"] + 1
