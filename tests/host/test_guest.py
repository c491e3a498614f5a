"""The oracle on a guest kernel (``pygup oracle --kernel``): the guest runner
(tools/oracle/guest.py), the record carried back from the guest and its
replay (guest_side.py).

The plumbing is tested everywhere; the test marked ``guest`` boots Debian's
6.1 under qemu and compares a few backings: it runs only with PYGUP_GUEST=1
(it takes a minute under TCG) and skips with the reason where qemu, vng,
root or the kernel are missing."""
from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from pygup.tools.cli import main
from pygup.tools.oracle import guest, guest_side
from pygup.tools.oracle.cells import Cell, enumerate_cells
from pygup.tools.oracle.guest_side import RecordedHost
from pygup.tools.oracle.pygup_side import run_pygup_cell
from pygup.tools.oracle.report import oracle_main, run_oracle


def _record(backings, override=None, policy="6.14", release="6.1.0-57-amd64"):
    """A record as a guest would write it, answering as pygup does under
    ``policy`` except for the cells in ``override`` (key -> [stage, ret])."""
    outcomes = {}
    for cell in enumerate_cells(backings):
        out, _ = run_pygup_cell(cell, policy)
        outcomes[cell.key] = [out.stage, out.ret]
    outcomes.update(override or {})
    return {"format": guest_side.FORMAT, "release": release, "backings": list(backings),
            "presets": {b: "ext4" for b in backings}, "skipped": {},
            "method_skipped": {}, "describe": {b: b for b in backings},
            "outcomes": outcomes, "seconds": 0.0}


# ---------------------------------------------------------------------------
# the record and its replay

def test_recorded_host_replays_outcomes_and_json_round_trips():
    rec = json.loads(json.dumps(_record(["anon"])))
    rep = run_oracle(["anon"], "6.14", host=RecordedHost(rec), release=rec["release"])
    assert rep.kernel == "6.1.0-57-amd64"
    assert rep.ok and len(rep.results) == 84 and not rep.disagreements


def test_recorded_host_disagreement_is_reported():
    key = "anon/private/rw/io_uring/prefault"
    rec = _record(["anon"], {key: ["call", -errno.EINVAL]})
    rep = run_oracle(["anon"], "6.14", host=RecordedHost(rec), release=rec["release"])
    assert [r.cell.key for r in rep.undocumented] == [key]
    assert rep.undocumented[0].host == "EINVAL" and not rep.ok


def test_recorded_host_rejects_other_formats_and_missing_cells():
    rec = _record(["anon"])
    with pytest.raises(ValueError, match="format"):
        RecordedHost(dict(rec, format=99))
    del rec["outcomes"]["anon/shared/rw/io_uring/prefault"]
    with pytest.raises(KeyError, match="no outcome"):
        RecordedHost(rec).run(Cell("anon", "shared", "rw", "io_uring", "prefault"))


def test_oracle_kernel_reports_missing_setup_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(guest, "check_setup", lambda: ["qemu-system-x86_64 not found: x"])
    called = []
    monkeypatch.setattr(guest, "fetch_kernel", lambda *a, **k: called.append(a))
    assert main(["oracle", "--kernel", "6.1", "--only", "anon"]) == 2
    err = capsys.readouterr().err
    assert "cannot boot a guest kernel" in err and "qemu-system-x86_64 not found" in err
    assert not called


def test_oracle_kernel_rejects_bad_arguments_before_booting(monkeypatch):
    monkeypatch.setattr(guest_side, "record_in_guest",
                        lambda *a, **k: pytest.fail("booted a guest"))
    with pytest.raises(ValueError, match="backing must be one of"):
        oracle_main(only="zfs", kernel="6.1", out=lambda s: None)
    with pytest.raises(ValueError, match="policy must be one of"):
        oracle_main(policy="9.9", kernel="6.1", out=lambda s: None)


def test_oracle_kernel_uses_the_guest_release_and_timing(monkeypatch):
    rec = _record(["anon"], policy="6.4")
    res = guest.GuestResult(0, "", "", 7.5, 20.25, rec["release"], "tcg")
    monkeypatch.setattr(guest_side, "record_in_guest", lambda *a, **k: (rec, res, None))
    lines = []
    assert oracle_main(only="anon", kernel="6.1", out=lines.append) == 0
    text = lines[0]
    assert text.startswith("pygup oracle: guest (tcg) kernel 6.1.0-57-amd64, pygup policy")
    assert "boot_s 7.5s, probe_s 20.2s" in text


# ---------------------------------------------------------------------------
# the runner's pieces

def test_package_regex_tells_6_1_from_6_12():
    pat = guest._package_regex("6.1", "amd64")
    assert pat.match("linux-image-6.1.0-57-amd64")
    assert not pat.match("linux-image-6.12.117+deb12-amd64")
    assert not pat.match("linux-image-6.1.0-57-amd64-dbg")
    assert guest._package_regex("6.12", "amd64").match("linux-image-6.12.117+deb12-amd64")


def test_bzimage_version_reads_the_setup_header(tmp_path):
    head = bytearray(0x800)
    head[0x202:0x206] = b"HdrS"
    head[0x20E:0x210] = (0x400).to_bytes(2, "little")      # string at 0x400 + 0x200
    text = b"6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP\0"
    head[0x600:0x600 + len(text)] = text
    img = tmp_path / "vmlinuz-x"
    img.write_bytes(bytes(head))
    assert guest.bzimage_version(img) == "6.1.0-57-amd64"
    img.write_bytes(b"\0" * 0x800)
    assert guest.bzimage_version(img) is None


def test_fetch_kernel_from_a_path_finds_modules_beside_it(tmp_path):
    (tmp_path / "boot").mkdir()
    vmlinuz = tmp_path / "boot" / "vmlinuz-6.9.9-test"
    vmlinuz.write_bytes(b"\0" * 1024)                 # no header: version from the name
    mods = tmp_path / "lib" / "modules" / "6.9.9-test"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text("")
    img = guest.fetch_kernel(str(vmlinuz))
    assert img.version == "6.9.9-test" and img.modules == mods.absolute()
    with pytest.raises(guest.KernelFetchError, match="is not a file"):
        guest.fetch_kernel(str(tmp_path / "nope" / "vmlinuz"))


def test_runner_script_writes_results_into_the_share(tmp_path):
    s = guest._runner_script(tmp_path, ["python3", "-c", "print(1)"], "/x y", {"A": "b c"})
    assert f"S={tmp_path}" in s and "export A='b c'" in s and "cd '/x y'" in s
    assert "python3 -c 'print(1)'" in s and f'mv "$S/{guest.RC}.tmp" "$S/{guest.RC}"' in s


def test_kvm_probe_can_be_forced(monkeypatch):
    guest.kvm_usable.cache_clear()
    monkeypatch.setenv("PYGUP_GUEST_ACCEL", "tcg")
    assert guest.kvm_usable() is False
    guest.kvm_usable.cache_clear()
    monkeypatch.setenv("PYGUP_GUEST_ACCEL", "kvm")
    assert guest.kvm_usable() is True
    guest.kvm_usable.cache_clear()


def test_check_setup_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(guest.shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(guest, "_find_vng", lambda: None)
    text = "\n".join(guest.check_setup())
    for want in ("qemu-system-x86", "virtme-ng", "kmod", "busybox-static", "file"):
        assert want in text


# ---------------------------------------------------------------------------
# the real thing: Debian 6.1 under qemu, a few backings (CI's subset)

CI_KERNEL = "6.1"
CI_BACKINGS = "anon,memfd,ext4"


@pytest.mark.guest
def test_guest_oracle_agrees_on_a_subset(tmp_path, capsys):
    if os.environ.get("PYGUP_GUEST") != "1":
        pytest.skip("boots a guest kernel under qemu (a minute or more): set PYGUP_GUEST=1")
    missing = guest.check_setup()
    if missing:
        pytest.skip("; ".join(missing))
    try:
        guest.fetch_kernel(CI_KERNEL)
    except guest.KernelFetchError as e:
        pytest.skip(f"no Debian {CI_KERNEL} kernel: {e}")
    out = tmp_path / "oracle.json"
    t0 = time.monotonic()
    rc = main(["oracle", "--kernel", CI_KERNEL, "--only", CI_BACKINGS, "--json", str(out)])
    if not out.exists():
        pytest.fail(f"pygup oracle --kernel {CI_KERNEL} exited {rc} without a report:\n"
                    + capsys.readouterr().err[-4000:])
    rep = json.loads(Path(out).read_text())
    print(f"guest oracle {CI_KERNEL} ({CI_BACKINGS}): {time.monotonic() - t0:.0f}s, "
          f"timing {rep['timing']}")
    assert rep["kernel"].startswith("6.1.")
    # 6.1 has its own preset: not even a documented difference is expected
    bad = [c for c in rep["cells"] if c["agree"] is False]
    assert bad == [] and rc == 0
    assert [x["name"] for x in rep["scenarios"] if x["agree"] is False] == []
    assert sum(x["agree"] is True for x in rep["scenarios"]) >= 9
    compared = sum(c["compared"] for c in rep["counts"].values())
    assert compared >= 3 * 84 - 3 * 12          # at most the io_uring/proc_mem columns skipped
    assert not rep["skipped"]
