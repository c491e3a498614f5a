"""The kernel's own long-term pin matrix (tools/testing/selftests/mm/
gup_longterm.c, David Hildenbrand, 2023) with its expected-outcome rule:

    should_work = not shared or not rw or fs in {tmpfs, hugetlbfs}

run through pygup's gup_test-style PIN_LONGTERM_TEST_START (pin the whole
range with pin_user_pages[_fast](FOLL_LONGTERM [| FOLL_WRITE]); the first
failing call's errno, else 0) and io_uring buffer registration."""
import errno

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup.callers import io_uring_register_buffers, io_uring_unregister_buffers

SUPPORTS_WRITABLE_LONGTERM = {"tmpfs", "hugetlbfs"}
BACKINGS = ["memfd", "tmpfs", "ext4", "xfs", "btrfs", "hugetlb"]


def make_file(m, backing):
    if backing == "memfd":
        return m.memfd_create("test", 4096), "tmpfs"
    if backing == "hugetlb":
        return m.memfd_create("test", 2 << 20, hugetlb=True), "hugetlbfs"
    return m.mount(backing).create("gup_longterm", 4096), backing


def pin_longterm_test_start(p, addr, size, write, fast):
    """gup_test.c's PIN_LONGTERM_TEST_START: 0 or -errno (pins released)."""
    flags = FOLL.LONGTERM | (FOLL.WRITE if write else 0)
    nr = size // 4096
    call = p.mm.pin_user_pages_fast if fast else p.mm.pin_user_pages
    ret, pages = call(addr, nr, flags)
    if ret > 0:
        p.mm.unpin_user_pages(pages)
    if ret < 0:
        return ret
    return 0 if ret == nr else -errno.EFAULT


@pytest.mark.parametrize("policy", ["6.5", "6.14"])
@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "private"])
@pytest.mark.parametrize("rw", [True, False], ids=["RW", "RO"])
@pytest.mark.parametrize("fast", [False, True], ids=["gup", "gup_fast"])
def test_longterm_pin_matrix(policy, backing, shared, rw, fast):
    m = Machine(policy=policy, memory="64MiB", movable="8MiB")
    f, fs = make_file(m, backing)
    p = m.spawn()
    size = f.size
    addr = p.mmap(size, PROT.READ | PROT.WRITE, MAP.SHARED if shared else MAP.PRIVATE, file=f)
    for off in range(0, size, 4096):          # memset(): fault everything in
        p.write(addr + off, 0xAB)
    should_work = not shared or not rw or fs in SUPPORTS_WRITABLE_LONGTERM
    ret = pin_longterm_test_start(p, addr, size, rw, fast)
    assert ret == (0 if should_work else -errno.EFAULT)
    p.exit()
    m.check()


@pytest.mark.parametrize("policy", ["6.5", "6.14"])
@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "private"])
def test_io_uring_fixed_buffer(policy, backing, shared):
    m = Machine(policy=policy, memory="64MiB", movable="8MiB")
    f, fs = make_file(m, backing)
    p = m.spawn()
    addr = p.mmap(f.size, PROT.READ | PROT.WRITE, MAP.SHARED if shared else MAP.PRIVATE, file=f)
    for off in range(0, f.size, 4096):
        p.write(addr + off, 1)
    should_work = not shared or fs in SUPPORTS_WRITABLE_LONGTERM
    ret = io_uring_register_buffers(p, addr, f.size)
    assert ret == (0 if should_work else -errno.EFAULT)
    if should_work:
        assert io_uring_unregister_buffers(p) == 0
    p.exit()
    m.check()


def test_6_4_allows_what_6_5_refuses():
    """Under the 6.4 policy the same R/W shared ext4 long-term pin works
    (io_uring had its own, stricter file check then: EOPNOTSUPP for every
    file but shmem and hugetlbfs, shared or private)."""
    m = Machine(policy="6.4", memory="64MiB", movable="8MiB")
    f = m.mount("ext4").create("f", 4096)
    p = m.spawn()
    addr = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    p.write(addr, 1)
    assert pin_longterm_test_start(p, addr, 4096, True, False) == 0
    assert io_uring_register_buffers(p, addr, 4096) == -errno.EOPNOTSUPP
    priv = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE, file=f)
    p.write(priv, 1)
    assert io_uring_register_buffers(p, priv, 4096) == -errno.EOPNOTSUPP
    shm = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=m.memfd_create("x", 4096))
    assert io_uring_register_buffers(p, shm, 4096) == 0
