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


@pytest.mark.parametrize("name", ["FOLL", "VM", "PROT", "MAP", "MS", "MREMAP", "MLOCK", "MCL",
                                  "FALLOC"])
def test_cheaper_flag_ops_answer_as_enum_flag_does(name):
    """fast_flag_ops: ``&`` and ``|`` give the very member enum.Flag's own
    methods give (same object, same class), for members, composites, bits
    no member names, plain ints on either side; a non-int is
    NotImplemented (a TypeError)."""
    import enum
    import random
    from pygup import flags
    cls = getattr(flags, name)
    assert cls.__or__ is not enum.Flag.__or__ and cls.__rand__ is not enum.Flag.__rand__
    rng = random.Random(name)
    values = [m.value for m in cls] + [0, 1 << 40]
    for _ in range(300):
        a = cls(rng.choice(values) | rng.choice(values))
        b = rng.choice(values) | rng.choice(values)
        for op, flag_op in ((lambda x, y: x & y, enum.Flag.__and__),
                            (lambda x, y: x | y, enum.Flag.__or__)):
            want = flag_op(a, b)
            assert op(a, b) is want and op(b, a) is want and op(a, cls(b)) is want
    with pytest.raises(TypeError):
        cls(0) | "x"
    with pytest.raises(TypeError):
        1.5 & cls(0)
