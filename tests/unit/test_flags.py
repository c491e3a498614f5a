"""FOLL values come from the C core; they must be Linux 6.5's (SPEC §1.1)."""
import pytest

from pygup import FOLL
from pygup.flags import errno_name, flag_names, check_flags, PROT

SPEC_6_5 = {
    "WRITE": 0x1, "GET": 0x2, "DUMP": 0x4, "FORCE": 0x8, "NOWAIT": 0x10, "NOFAULT": 0x20,
    "HWPOISON": 0x40, "ANON": 0x80, "LONGTERM": 0x100, "SPLIT_PMD": 0x200,
    "PCI_P2PDMA": 0x400, "INTERRUPTIBLE": 0x800, "HONOR_NUMA_FAULT": 0x1000,
    "TOUCH": 0x10000, "TRIED": 0x20000, "REMOTE": 0x40000, "PIN": 0x80000,
    "FAST_ONLY": 0x100000, "UNLOCKABLE": 0x200000,
}


def test_foll_values_are_linux_6_5():
    assert {f.name: f.value for f in FOLL} == SPEC_6_5


def test_names():
    assert flag_names(FOLL, FOLL.LONGTERM | FOLL.WRITE) == "WRITE|LONGTERM"
    assert flag_names(FOLL, 0) == "0"
    assert errno_name(-95) == "EOPNOTSUPP" and errno_name(14) == "EFAULT" and errno_name(0) == "0"


def test_check_flags():
    assert check_flags(PROT.READ, PROT, "prot") == 1
    with pytest.raises(ValueError, match="prot"):
        check_flags(0x80, PROT, "prot")
    with pytest.raises(TypeError, match="prot"):
        check_flags("1", PROT, "prot")
