"""``pygup can-pin`` and ``pygup explain``: the driver developer's question
answered in one command; exit 0 allowed, 1 refused, 2 usage error; bad
values are argparse errors that list the choices."""
import json
import subprocess
import sys

import pytest

from pygup import canpin
from pygup.canpin import can_pin, format_matrix, run_cell
from pygup.tools.cli import main


def _cells(capsys, argv):
    rc = main(argv + ["--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_can_pin_table_names_rule_and_advice(capsys):
    rc = main(["can-pin", "--backing", "ext4", "tmpfs", "--caller", "rdma", "--policy",
               "6.4", "6.5"])
    text = capsys.readouterr().out
    assert rc == 1                                   # ext4 under 6.5 is refused
    row = next(line for line in text.splitlines() if line.startswith("ext4"))
    assert row.split()[2] == "ok" and "EFAULT" in row
    assert "writable_file_mapping_allowed" in text
    assert "memfd" in text and "hugetlbfs" in text   # where to put the buffer instead
    assert "drop FOLL_WRITE (rdma-ro)" in text       # the device only reads: say how
    assert "since 6.5" in text


def test_can_pin_json_cells(capsys):
    rc, data = _cells(capsys, ["can-pin", "--backing", "ext4", "hugetlbfs", "ext4-private",
                               "--caller", "io_uring", "vfio", "--policy", "6.4", "6.5"])
    assert rc == 1
    cell = {(c["backing"], c["caller"], c["policy"]): c for c in data["cells"]}
    assert len(cell) == 3 * 2 * 2
    assert cell["ext4", "vfio", "6.4"]["allowed"]
    assert cell["ext4", "vfio", "6.5"]["rule"] == "writable_file_mapping_allowed"
    assert cell["ext4", "vfio", "6.5"]["errno"] == "EFAULT"
    # io_uring's own check up to 6.4, GUP's from 6.5 (a MAP_PRIVATE file is fine then)
    assert cell["ext4-private", "io_uring", "6.4"]["errno"] == "EOPNOTSUPP"
    assert cell["ext4-private", "io_uring", "6.4"]["rule"].startswith("io_sqe_buffer_register")
    assert cell["ext4-private", "io_uring", "6.5"]["allowed"]
    assert all(cell["hugetlbfs", c, p]["allowed"] for c in ("io_uring", "vfio")
               for p in ("6.4", "6.5"))


def test_can_pin_all_allowed_exits_0(capsys):
    assert main(["can-pin", "--backing", "memfd", "anon", "--caller", "io_uring", "rdma"]) == 0


def test_read_only_registration_of_ext4_is_allowed():
    assert run_cell("ext4", "rdma-ro", "6.5").allowed
    assert not run_cell("ext4", "rdma", "6.5").allowed


def test_refusals_beyond_the_seed_name_their_rules():
    assert run_cell("dax", "vfio", "6.5").rule == "FOLL_LONGTERM on fsdax"
    assert run_cell("secretmem", "odirect", "6.5").rule == "vma_is_secretmem"
    c = run_cell("secretmem-private", "io_uring", "6.5")   # secretmem_mmap() refuses it
    assert not c.allowed and c.rule == "mmap" and c.errno == "EINVAL"


def test_since_reads_the_changes_table_when_there_is_one(monkeypatch):
    class Change:
        def __init__(self):
            self.name, self.version = "writable_file_mapping_check", "6.5"
            self.commit = "8ac268436e6d52f3bb4d212df9395aec97afaa00"
            self.title = "mm/gup: disallow FOLL_LONGTERM GUP-nonfast writing to file-backed mappings"
            self.sets = (("writable_file_mapping_check", True),)
    monkeypatch.setattr(canpin.policy_mod, "CHANGES", (Change(),), raising=False)
    text = format_matrix(can_pin(["ext4"], ["vfio"], ["6.5"]))
    assert 'refused since 6.5 (commit 8ac268436e6d "mm/gup: disallow' in text


def test_since_falls_back_to_the_presets_without_a_table(monkeypatch):
    monkeypatch.delattr(canpin.policy_mod, "CHANGES", raising=False)
    assert canpin.since("writable_file_mapping_check") == "6.5"


def test_explain_caller_exit_status_and_trace(capsys):
    assert main(["explain", "--caller", "io_uring", "--fs", "ext4", "--policy", "6.5"]) == 1
    text = capsys.readouterr().out
    assert "decided by: writable_file_mapping_allowed" in text and "advice:" in text
    assert main(["explain", "--caller", "io_uring", "--fs", "tmpfs"]) == 0
    assert "allowed" in capsys.readouterr().out


def test_explain_json(capsys):
    rc = main(["explain", "--fs", "ext4", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1 and data["rule"] == "writable_file_mapping_allowed" and not data["allowed"]
    assert any(s["rule"] == "writable_file_mapping_allowed" for s in data["trace"])


def test_explain_backings_that_used_to_raise(capsys):
    assert main(["explain", "--fs", "dax"]) == 1
    assert "FOLL_LONGTERM on fsdax" in capsys.readouterr().out
    assert main(["explain", "--fs", "secretmem", "--map", "private"]) == 1
    assert "mmap of secretmem-private refused: -EINVAL" in capsys.readouterr().out


def test_fast_path_trace_says_why_it_fell_back(capsys):
    main(["explain", "--fs", "tmpfs", "--api", "pin_user_pages_fast", "--prefault"])
    assert "why=ZONE_MOVABLE" in capsys.readouterr().out
    main(["explain", "--fs", "ext4", "--api", "pin_user_pages_fast"])
    assert "why=not present" in capsys.readouterr().out


@pytest.mark.parametrize("argv, choice", [
    (["explain", "--api", "io_uring"], "pin_user_pages_fast"),
    (["explain", "--fs", "nosuchfs"], "hugetlbfs"),
    (["explain", "--caller", "nosuch"], "io_uring"),
    (["explain", "--flags", "LONGTERM,BOGUS"], "LONGTERM"),
    (["explain", "--policy", "9.9"], "6.18"),
    (["can-pin", "--backing", "zfs"], "ext4"),
    (["can-pin", "--caller", "nvme"], "vfio"),
    (["world", "--fs", "dax"], "tmpfs"),
    (["demo", "--policy", "5.0"], "6.4"),
])
def test_bad_values_are_usage_errors_listing_the_choices(capsys, argv, choice):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and choice in err and "Traceback" not in err


def test_version_and_python_m(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("pygup ")
    out = subprocess.run([sys.executable, "-m", "pygup", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("pygup ")


def test_every_option_has_help():
    from pygup.tools.cli import build_parser
    import argparse

    def walk(parser, where):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{where} {name}")
            elif action.option_strings and action.help in (None, ""):
                raise AssertionError(f"{where} {action.option_strings} has no help")
    walk(build_parser(), "pygup")
