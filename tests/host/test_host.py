"""The live-kernel oracle (pygup/tools/oracle/, the host probes in C, ``pygup oracle``).

The plumbing (matrix, pygup side of a cell, table, JSON, exit status) is
tested everywhere with a fake host; the comparison with this machine's
kernel runs where io_uring works and we are root, and skips with the reason
elsewhere."""
from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from pygup.config.policy import POLICIES
from pygup.tools import oracle
from pygup.tools.cli import main
from pygup.tools.oracle import host
from pygup.tools.oracle import report as report_mod
from pygup.tools.oracle.cells import Cell, Deliberate, Outcome
from pygup.tools.oracle.report import Report

LINUX = sys.platform.startswith("linux")


# ---------------------------------------------------------------------------
# matrix and bookkeeping

def test_enumerate_cells_is_the_full_product():
    cells = oracle.enumerate_cells()
    assert len(cells) == len(oracle.BACKINGS) * 2 * 2 * len(oracle.METHODS) * 3 == 1008
    assert len(set(cells)) == len(cells)
    assert {c.variant for c in cells} == {"prefault", "noprefault", "msync"}
    only = oracle.enumerate_cells(["memfd"])
    assert len(only) == 84 and {c.backing for c in only} == {"memfd"}
    assert cells[0].key == "anon/shared/rw/io_uring/prefault"


def test_enumerate_cells_rejects_unknown_backing():
    with pytest.raises(ValueError, match="backing must be one of"):
        oracle.enumerate_cells(["zfs"])


@pytest.mark.parametrize("release, policy", [
    ("6.18.44-fc-v657", "6.18"), ("6.14.0", "6.14"), ("6.8.12-generic", "6.5"),
    ("6.12.117-amd64", "6.12"), ("6.1.192", "6.1"), ("6.5.0", "6.5"), ("6.4.16", "6.4"),
    ("5.15.0-91-generic", "6.1"), ("7.1", "6.18")])
def test_nearest_policy(release, policy):
    assert oracle.nearest_policy(release) == policy


def test_nearest_policy_rejects_garbage():
    with pytest.raises(ValueError):
        oracle.nearest_policy("linux")


def test_outcome_classes():
    assert Outcome("call", 0).cls == "ok"
    assert Outcome("call", 4096).cls == "ok"
    assert Outcome("call", -errno.EFAULT).cls == "EFAULT"
    assert Outcome("mmap", -errno.EACCES).cls == "mmap:EACCES"
    assert Outcome("msync", -errno.EINVAL).cls == "msync:EINVAL"


def test_deliberate_matching():
    d = Deliberate("why", backing="hugetlbfs", method="proc_mem_write", policies=("6.5",),
                   host="ok", pygup="EIO")
    cell = Cell("hugetlbfs", "private", "r", "proc_mem_write", "prefault")
    assert d.matches(cell, "6.5", "ok", "EIO")
    assert not d.matches(cell, "6.14", "ok", "EIO")
    assert not d.matches(cell, "6.5", "ok", "EFAULT")
    assert not d.matches(Cell("anon", "private", "r", "proc_mem_write", "prefault"),
                         "6.5", "ok", "EIO")
    for entry in oracle.DELIBERATE:       # each documented difference has a reason
        assert entry.reason and (entry.policies is None or
                                 set(entry.policies) <= set(POLICIES))


# ---------------------------------------------------------------------------
# the pygup side of a cell

@pytest.mark.parametrize("key, policy, expect", [
    ("ext4/shared/rw/io_uring/prefault", "6.5", "EFAULT"),      # the seed's refusal
    ("ext4/shared/rw/io_uring/prefault", "6.4", "EOPNOTSUPP"),  # io_uring's own 6.4 check
    ("memfd/shared/rw/io_uring/prefault", "6.4", "ok"),
    ("ext4/private/rw/io_uring/prefault", "6.5", "ok"),
    ("memfd/shared/rw/io_uring/noprefault", "6.5", "ok"),
    ("ramfs/shared/rw/io_uring/msync", "6.14", "EFAULT"),       # generic page_mkwrite
    ("ext4/shared/rw/o_direct_read/msync", "6.5", "ok"),        # short-term pin
    ("ext4/shared/r/proc_mem_write/prefault", "6.5", "EIO"),    # forced write, not COW
    ("anon/private/r/proc_mem_write/prefault", "6.5", "ok"),    # forced write, COW
    ("hugetlbfs/private/r/proc_mem_write/prefault", "6.5", "EIO"),
    ("hugetlbfs/private/r/proc_mem_write/prefault", "6.14", "ok"),
    ("secretmem/shared/rw/vmsplice/prefault", "6.5", "EFAULT"),
    ("secretmem/private/rw/vmsplice/prefault", "6.5", "mmap:EINVAL"),
    ("readonly/shared/rw/io_uring/prefault", "6.5", "mmap:EACCES"),
    ("readonly/shared/r/process_vm_readv/prefault", "6.5", "ok"),
    ("readonly/shared/r/process_vm_writev/noprefault", "6.5", "EFAULT"),
])
def test_pygup_side_of_a_cell(key, policy, expect):
    out, trace = oracle.run_pygup_cell(Cell(*key.split("/")), policy)
    assert out.cls == expect
    assert trace is None


def test_pygup_side_explains():
    cell = Cell("ext4", "shared", "rw", "io_uring", "prefault")
    out, trace = oracle.run_pygup_cell(cell, "6.5", explain=True)
    assert out.cls == "EFAULT"
    assert "pin_user_pages(gup_flags=" in trace
    assert "decided by: writable_file_mapping_allowed" in trace
    _, trace = oracle.run_pygup_cell(cell, "6.14", explain=True)
    assert trace.startswith("pin_user_pages_fast(")        # io_uring_pin_fast


def test_workdir_and_readonly_follow_the_host_preset():
    cell = Cell("workdir", "shared", "rw", "io_uring", "prefault")
    assert oracle.run_pygup_cell(cell, "6.5", "tmpfs")[0].cls == "ok"
    assert oracle.run_pygup_cell(cell, "6.5", "xfs")[0].cls == "EFAULT"


# ---------------------------------------------------------------------------
# the report, with a fake host

class FakeHost:
    """Answers as pygup does, except for the cells in ``override``."""

    def __init__(self, override=None, skipped=None, method_skipped=None, policy="6.14"):
        self.policy = policy
        self.override = override or {}
        self.skipped = dict(skipped or {})
        self.method_skipped = dict(method_skipped or {})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def preset(self, backing):
        return "ext4"

    def describe(self):
        return {"anon": "anon (pygup anon)"}

    def run(self, cell):
        if cell.method in self.method_skipped:
            return None
        if cell.key in self.override:
            return self.override[cell.key]
        return oracle.run_pygup_cell(cell, self.policy)[0]


def test_report_all_agree(tmp_path):
    lines = []
    out = tmp_path / "o.json"
    rc = oracle.oracle_main(only="anon,memfd", policy="6.14", json_out=str(out),
                          out=lines.append, host=FakeHost(skipped={"memfd": "no memfd here"},
                                                          method_skipped={"vmsplice": "nope"}),
                          release="6.18.1")
    assert rc == 0
    text = lines[0]
    assert text.startswith("pygup oracle: host kernel 6.18.1, pygup policy 6.14")
    assert "skipped backing memfd: no memfd here" in text
    assert "skipped method vmsplice: nope" in text
    assert "anon         72 compared,   72 agree" in text
    data = json.loads(out.read_text())
    assert data["kernel"] == "6.18.1" and data["policy"] == "6.14"
    assert data["counts"]["anon"] == {"compared": 72, "agree": 72, "deliberate": 0,
                                      "disagree": 0}
    assert len(data["cells"]) == 84
    vms = [c for c in data["cells"] if c["method"] == "vmsplice"]
    assert vms and all(c["host"] == "skip" and c["agree"] is None for c in vms)
    assert data["skipped"] == {"memfd": "no memfd here"}
    assert data["deliberate_differences"][0]["reason"]


def test_report_disagreement_fails_with_trace():
    key = "anon/private/rw/io_uring/prefault"
    lines = []
    rc = oracle.oracle_main(only="anon", policy="6.14", out=lines.append, release="6.18",
                          host=FakeHost({key: Outcome("call", -errno.ENOMEM)}))
    assert rc == 1
    text = lines[0]
    assert f"{key}: host ENOMEM (-12), pygup ok (0) -- NOT DOCUMENTED" in text
    assert "pin_user_pages_fast(gup_flags=WRITE|LONGTERM) = 1" in text     # the trace
    row = [ln for ln in text.splitlines() if ln.startswith("anon       private  rw    io_uring")
           and "prefault" in ln.split()]
    assert row and row[0].split()[-1] == "NO"


def test_report_deliberate_difference_passes():
    key = "hugetlbfs/private/r/proc_mem_write/noprefault"
    rep = oracle.run_oracle(["hugetlbfs"], "6.5", release="6.18",
                          host=FakeHost({key: Outcome("call", 8)}, policy="6.5"))
    assert rep.ok
    (r,) = rep.disagreements
    assert r.cell.key == key and r.deliberate and "hugetlb" in r.deliberate
    assert rep.counts()["hugetlbfs"]["deliberate"] == 1
    assert report_mod.format_row(r).split()[-1] == "DELIB"


def test_run_oracle_rejects_unknown_policy():
    with pytest.raises(ValueError, match="policy must be one of"):
        oracle.run_oracle(["anon"], "5.10", host=FakeHost())


def test_cli_oracle_rejects_unknown_backing(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["oracle", "--only", "zfs"])
    assert exc.value.code == 2
    assert "backing must be one of" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the host side's set-up, without root

@pytest.mark.skipif(not LINUX, reason="the host probes are Linux system calls")
def test_host_env_without_root_skips_with_reasons(monkeypatch):
    env = host.HostEnv(["anon", "ramfs", "ext4", "xfs"])
    env.root = False
    with env:
        assert set(env.backings) == {"anon"}
        assert "needs root" in env.skipped["ramfs"]
        assert "needs root" in env.skipped["ext4"]
        tmp = env.tmp
        assert os.path.isdir(tmp)
    assert not os.path.exists(tmp)


@pytest.mark.skipif(not LINUX, reason="the host probes are Linux system calls")
def test_host_env_missing_mkfs_skips(monkeypatch):
    real = host.shutil.which
    monkeypatch.setattr(host.shutil, "which",
                        lambda name: None if name == "mkfs.xfs" else real(name))
    env = host.HostEnv(["xfs"])
    env.root = True
    with env:
        assert env.skipped["xfs"] == "mkfs.xfs not installed (apt-get install xfsprogs)"


@pytest.mark.skipif(not LINUX, reason="the host probes are Linux system calls")
def test_host_cells_anon_and_memfd_without_root():
    """Anonymous memory and memfd need no privileges: the host side runs
    (io_uring cells skip where io_uring is off) and agrees with pygup."""
    rep = oracle.run_oracle(["anon", "memfd"])
    assert rep.results and not rep.skipped
    assert rep.ok, oracle.format_report(rep)
    assert all(r.agree for r in rep.results if r.compared)


@pytest.mark.skipif(not LINUX, reason="the host probes are Linux system calls")
def test_host_touch_catches_faults():
    from pygup._native import HostProbes as H
    rc, addr = H.mmap(8192, 1, 0x22)             # PROT_READ, MAP_PRIVATE|ANONYMOUS
    assert rc == 0
    try:
        assert H.touch(addr, 8192, False) == 0
        assert H.touch(addr, 8192, True, 1) == -errno.EFAULT      # SIGSEGV, caught
    finally:
        assert H.munmap(addr, 8192) == 0
    assert H.mmap(0, 3, 0x22)[0] == -errno.EINVAL


# ---------------------------------------------------------------------------
# the live comparison

def _live_reason():
    if not LINUX:
        return "not Linux"
    if os.geteuid() != 0:
        return "needs root (loop mounts, ramfs, huge pages)"
    return host.io_uring_status()


LIVE_SKIP = _live_reason()

@pytest.fixture(scope="module")
def live_report() -> Report:
    if LIVE_SKIP:
        pytest.skip(LIVE_SKIP)
    before = open("/proc/sys/vm/nr_hugepages").read()
    rep = oracle.run_oracle()
    # everything set up was torn down again
    assert open("/proc/sys/vm/nr_hugepages").read() == before
    assert not [p for p, _ in host.mount_table() if "pygup-oracle-" in p]
    return rep


def test_live_matrix_agrees(live_report):
    rep = live_report
    assert rep.policy == oracle.nearest_policy(os.uname().release)
    wrong = list(rep.undocumented)
    assert not wrong, "\n".join(f"{r.cell.key}: host {r.host}, pygup {r.pygup}\n{r.explain}"
                                for r in wrong)
    compared = sum(c["compared"] for c in rep.counts().values())
    assert compared >= 84 * (len(oracle.BACKINGS) - len(rep.skipped)) - 84 * len(rep.method_skipped)


def test_live_seed_cells(live_report):
    """The kernel and pygup both refuse io_uring on shared ext4 and allow it
    on tmpfs: the seed patch's rule, on a real kernel."""
    by_key = {r.cell.key: r for r in live_report.results}
    for backing, want in (("ext4", "EFAULT"), ("tmpfs", "ok"), ("memfd", "ok")):
        r = by_key.get(f"{backing}/shared/rw/io_uring/prefault")
        if r is None:
            pytest.skip(live_report.skipped.get(backing, f"{backing} not run"))
        assert (r.host, r.pygup) == (want, want)


@pytest.mark.skipif(not LINUX, reason="Linux only")
def test_io_uring_register_timing():
    why = host.io_uring_status()
    if why:
        pytest.skip(why)
    t = host.io_uring_register_timing(pages=16, iterations=5)
    assert 0 < t["min_ns"] <= t["ns_per_iter"]
    assert t["ns_per_page"] == pytest.approx(t["ns_per_iter"] / 16)
    with pytest.raises(ValueError):
        host.io_uring_register_timing(pages=0)


def test_live_cleanup_after_failure(monkeypatch):
    """A failure in the middle of a run still unmounts, detaches the loop
    devices, deletes the images and restores nr_hugepages."""
    if LIVE_SKIP:
        pytest.skip(LIVE_SKIP)
    before = open("/proc/sys/vm/nr_hugepages").read()
    calls = []

    def boom(self, cell):
        calls.append(cell)
        raise RuntimeError("injected")

    monkeypatch.setattr(host.HostEnv, "run", boom)
    with pytest.raises(RuntimeError, match="injected"):
        oracle.run_oracle(["ext4", "hugetlbfs"])
    assert calls
    assert open("/proc/sys/vm/nr_hugepages").read() == before
    assert not [p for p, _ in host.mount_table() if "pygup-oracle-" in p]
    import subprocess
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert "pygup-oracle-" not in loops


def test_fs_presets_fsync():
    """secretmem's file_operations have no ->fsync (msync(MS_SYNC) -> EINVAL
    on the host); every other preset has one."""
    from pygup.kernel.fs import PRESETS
    assert [n for n, t in PRESETS.items() if not t.fsync] == ["secretmem"]
