"""The oracle's multi-step scenarios (tools/oracle/scenarios.py) and the pygup
pieces they replay with: File.pread/pwrite, Process.pagemap, the io_uring
fixed-buffer callers, a multi-page process_vm_readv.  The comparison with
this machine's kernel runs where io_uring works and we are root."""
from __future__ import annotations

import errno
import json
import os

import pytest

from pygup import callers
from pygup.flags import MAP, PAGE_SIZE, PROT, GupError
from pygup.machine import Machine
from pygup.tools.oracle import host
from pygup.tools.oracle.cells import nearest_policy
from pygup.tools.oracle.guest_side import RecordedHost
from pygup.tools.oracle.pygup_side import run_pygup_scenario
from pygup.tools.oracle.report import format_report, run_oracle
from pygup.tools.oracle.scenarios import SCENARIOS

RW = PROT.READ | PROT.WRITE


def _machine(policy="6.18"):
    m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
    return m, m.spawn()


# ---------------------------------------------------------------------------
# the pygup pieces

def test_file_pread_pwrite_go_through_the_page_cache():
    m, p = _machine()
    f = m.mount("ext4").create("f", 2 * PAGE_SIZE)
    assert f.pread(0) == 0 and f.pread(2) is None          # past the end: 0 bytes
    f.pwrite(1, 0x77)
    addr = p.mmap(2 * PAGE_SIZE, RW, MAP.SHARED, file=f)
    assert p.read(addr + PAGE_SIZE) == 0x77                 # the same page-cache page
    assert f.disk(1) == 0 and f.writeback() == 1 and f.disk(1) == 0x77
    assert not f.fs.warnings                                # write_begin told the fs
    with pytest.raises(ValueError, match="past the end"):
        f.pwrite(2, 1)
    ro = f.fs.open("f", writable=False)
    with pytest.raises(GupError) as e:
        ro.pwrite(0, 1)
    assert e.value.errno == errno.EBADF


def test_pagemap_present_and_exclusive():
    m, p = _machine()
    addr = p.mmap(PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert p.pagemap(addr) == (False, None, False)
    p.write(addr, 1)
    present, pfn, excl = p.pagemap(addr)
    assert present and pfn is not None and excl
    child = p.fork()
    assert p.pagemap(addr) == (True, pfn, False)            # shared with the child: COW
    child.exit()
    assert p.pagemap(addr)[2]


def test_io_uring_fixed_buffer_io_uses_the_pinned_page():
    m, p = _machine()
    out, src = m.memfd_create("out", PAGE_SIZE), m.memfd_create("src", PAGE_SIZE)
    src.pwrite(0, 0x99)
    addr = p.mmap(PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert callers.io_uring_write_fixed(p, out, 0) == -errno.EFAULT   # nothing registered
    p.write(addr, 0x11)
    assert callers.io_uring_register_buffers(p, addr, PAGE_SIZE) == 0
    p.munmap(addr, PAGE_SIZE)                               # the pin keeps the page
    assert callers.io_uring_write_fixed(p, out, 0) == PAGE_SIZE and out.pread(0) == 0x11
    assert callers.io_uring_read_fixed(p, src, 0) == PAGE_SIZE
    assert callers.io_uring_write_fixed(p, out, 0) == PAGE_SIZE and out.pread(0) == 0x99
    assert callers.io_uring_read_fixed(p, src, 5) == 0                # past the end
    assert callers.io_uring_write_fixed(p, out, 0, buf_page=1) == -errno.EFAULT


def test_process_vm_readv_range_stops_at_the_first_bad_page():
    m, p = _machine()
    addr = p.mmap(3 * PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert callers.process_vm_readv_range(p, addr, 3) == 3 * PAGE_SIZE
    p.mprotect(addr + PAGE_SIZE, PAGE_SIZE, PROT.NONE)
    assert callers.process_vm_readv_range(p, addr, 3) == PAGE_SIZE
    p.munmap(addr, PAGE_SIZE)
    assert callers.process_vm_readv_range(p, addr, 3) == -errno.EFAULT


# ---------------------------------------------------------------------------
# scenarios on pygup: the rules that tell the presets apart

@pytest.mark.parametrize("name, policy, expect", [
    # 6.1's io_uring: one file per buffer (-EINVAL), no file but shmem/hugetlb
    ("uring_across_memfds", "6.1", [-errno.EINVAL, 2 * PAGE_SIZE]),
    ("uring_across_memfds", "6.12", [0, 2 * PAGE_SIZE]),
    ("uring_anon_then_memfd", "6.1", [-errno.EINVAL, 2 * PAGE_SIZE]),
    ("read_fixed_private_file", "6.12", [0, PAGE_SIZE, [0, 0x7272], 0x5757, True]),
])
def test_scenario_on_pygup(name, policy, expect):
    assert run_pygup_scenario(SCENARIOS[name], policy) == expect


def test_read_fixed_private_file_is_refused_by_6_1():
    got = run_pygup_scenario(SCENARIOS["read_fixed_private_file"], "6.1")
    assert got[0] == -errno.EOPNOTSUPP and got[3] == 0x5757


def test_fork_after_pin_keeps_the_parents_data():
    child, same1, excl1, ret, data, same2, excl2 = run_pygup_scenario(
        SCENARIOS["fork_after_pin"], "6.18")
    assert (child, same1, excl1, ret, data, same2, excl2) == (0, True, True, PAGE_SIZE, 0xB2B2,
                                                              True, True)


def test_force_write_leaves_the_file_alone():
    before, ret, after, file_word, same, excl = run_pygup_scenario(
        SCENARIOS["force_write_ro_private_file"], "6.18")
    assert ret == 8 and after[1] != before[1] and file_word == before[1]
    assert not same and excl


def test_writeback_then_short_pins_only_the_write_pin_dirties():
    got = run_pygup_scenario(SCENARIOS["writeback_then_short_pins"], "6.18")
    (w, dirty0, ms, clean, pvr, after_pvr, vms, after_vms, dio, after_dio, value,
     ms2, file_word) = got
    assert (w, dirty0, ms, clean) == (0, True, 0, False)      # writeback cleaned it
    assert (pvr, after_pvr) == (PAGE_SIZE, False)             # read-only pin
    assert (vms, after_vms) == (PAGE_SIZE, False)             # a reference, no write
    assert (dio, after_dio, value) == (PAGE_SIZE, True, [0, 0x7272])   # FOLL_WRITE pin
    assert (ms2, file_word) == (0, 0x7272)                    # the device's data on disk


def test_o_direct_write_takes_each_vmas_page():
    # anon A, the private mapping's page-cache page W, the zero page
    assert run_pygup_scenario(SCENARIOS["o_direct_write_data"], "6.12") == [
        0, 3 * PAGE_SIZE, 0xA1A1, 0x5757, 0, 0x5757]


def test_o_direct_write_over_a_hole_fails_but_the_first_page_landed():
    assert run_pygup_scenario(SCENARIOS["o_direct_write_hole"], "6.12") == [
        0, -errno.EFAULT, 0xA1A1, 2, 3, 0x5757]


def test_proc_mem_write_stops_at_the_hole():
    steps, ret, at_hole, reads, file_word, last = run_pygup_scenario(
        SCENARIOS["proc_mem_across_vmas"], "6.18")
    assert steps == [0, 0, 0] and ret == 3 * PAGE_SIZE and at_hole == -errno.EIO
    v = 0x0123456789ABCDEF
    # FOLL_FORCE writes through PROT_NONE and into the R/O private mapping (a COW copy)
    assert reads == [[8, v], [8, v + 1], [8, v + 2], [-errno.EIO, 0], [8, 0]]
    assert file_word == 0x5757 and last                      # file untouched; page 4 faulted
                                                             # in by the read, not written


def test_o_direct_file_callers_check_their_arguments():
    m, p = _machine()
    f = m.mount("ext4").create("f", 2 * PAGE_SIZE)
    f.pwrite(0, 0x44)
    addr = p.mmap(2 * PAGE_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    assert callers.o_direct_pread(p, f, 0, addr, PAGE_SIZE) == PAGE_SIZE
    assert p.read(addr) == 0x44 and f.disk(0) == 0x44        # written back first
    p.write(addr + PAGE_SIZE, 0x55)
    assert callers.o_direct_pwrite(p, f, 1, addr + PAGE_SIZE, PAGE_SIZE) == PAGE_SIZE
    assert f.disk(1) == 0x55 and f.pread(1) == 0x55
    with pytest.raises(ValueError, match="past the end"):
        callers.o_direct_pwrite(p, f, 1, addr, 2 * PAGE_SIZE)
    with pytest.raises(ValueError, match="index"):
        callers.o_direct_pread(p, f, -1, addr, PAGE_SIZE)
    memfd = m.memfd_create("m", PAGE_SIZE)                   # no O_DIRECT on shmem here
    assert callers.o_direct_pread(p, memfd, 0, addr, PAGE_SIZE) == -errno.EINVAL
    ro = f.fs.open("f", writable=False)
    assert callers.o_direct_pwrite(p, ro, 0, addr, PAGE_SIZE) == -errno.EBADF
    with pytest.raises(ValueError, match="page-aligned"):
        callers.proc_mem_write_pages(p, addr + 8, [1])
    with pytest.raises(ValueError, match="at least one"):
        callers.proc_mem_write_pages(p, addr, [])
    m.check()


# ---------------------------------------------------------------------------
# the report

class _Rec(RecordedHost):
    def __init__(self, scenarios):
        super().__init__({"format": 2, "release": "6.18.0", "skipped": {}, "presets": {},
                          "method_skipped": {}, "describe": {}, "outcomes": {},
                          "scenarios": scenarios})


def test_a_scenario_disagreement_fails_the_report():
    sc = SCENARIOS["range_hole"]
    good = run_pygup_scenario(sc, "6.18")
    rep = run_oracle([], "6.18", host=_Rec({sc.name: good}), release="6.18.0")
    assert rep.ok and [x.name for x in rep.scenarios if x.compared] == ["range_hole"]
    bad = list(good)
    bad[1] = 0
    rep = run_oracle([], "6.18", host=_Rec({sc.name: bad}), release="6.18.0")
    assert not rep.ok and [x.name for x in rep.scenario_disagreements] == ["range_hole"]
    assert "range_hole                   NO" in format_report(rep)


def test_a_recorded_nested_outcome_compares_equal():
    """A guest's record went through JSON: tuples nested in an outcome came
    back as lists, and the pygup side's outcome must read the same."""
    sc = SCENARIOS["proc_mem_across_vmas"]
    recorded = json.loads(json.dumps(run_pygup_scenario(sc, "6.18")))
    rep = run_oracle([], "6.18", host=_Rec({sc.name: recorded}), release="6.18.0")
    assert rep.ok and [x.name for x in rep.scenarios if x.compared] == [sc.name]


# ---------------------------------------------------------------------------
# the real thing, on this machine's kernel

def _host_ready():
    if os.geteuid() != 0:
        return "not root (the ext4 scenarios need a loop mount)"
    return host.io_uring_status()


@pytest.mark.skipif(_host_ready() is not None, reason=str(_host_ready()))
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_agrees_with_this_kernel(name, tmp_path):
    sc = SCENARIOS[name]
    with host.HostEnv(["memfd", "ext4"], workdir=str(tmp_path)) as env:
        got = host.run_host_scenario(env, sc)
    if got is None:
        pytest.skip(f"{name} cannot run here: {env.skipped or env.method_skipped}")
    assert got == run_pygup_scenario(sc, nearest_policy(os.uname().release))
