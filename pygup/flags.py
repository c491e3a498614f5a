"""Flag sets (FOLL_*, VM_*, PROT_*, MAP_*, MS_*, MADV_*, MREMAP_*, MLOCK_*,
MCL_*, FALLOC_FL_*) and pygup's exceptions.

FOLL values are Linux 6.5's (include/linux/mm_types.h and mm/internal.h,
SPEC §1.1); VM/PROT/MAP/MS values are the x86-64 uapi and mm.h ones.
Constants that the C core defines (FOLL values, page size, PTE and folio
bits) are read from it through ``pygup._native`` and never restated here.
"""
from __future__ import annotations

import enum
import errno as _errno
import functools
import operator
from typing import Optional

from pygup._native import C
from pygup.errors import GupError, InvariantError  # noqa: F401  (re-exported)

# sizes, read from the C core once (csrc/pygup.h); every module takes them
# from here
PAGE_SHIFT: int = C.PAGE_SHIFT
PAGE_SIZE: int = C.PAGE_SIZE
PAGE_MASK: int = ~(PAGE_SIZE - 1)
PMD_SHIFT: int = C.PMD_SHIFT
PMD_ORDER: int = C.PMD_ORDER
PMD_NR: int = C.PMD_NR
PMD_SIZE: int = 1 << C.PMD_SHIFT           # HPAGE_PMD_SIZE: a THP / hugetlb page
TASK_SIZE: int = C.TASK_SIZE_MAX
# include/linux/fs.h MAX_LFS_FILESIZE on 64-bit (LLONG_MAX): the largest file
# size (s_maxbytes) and the end of the last mappable file byte (file_mmap_ok());
# a kernel limit the C core has no use for, so it lives here
MAX_LFS_FILESIZE: int = (1 << 63) - 1


# gup_flags: the values are the C core's (csrc/pygup.h), which are Linux
# 6.5's (SPEC §1.1); tests/test_flags.py checks them against SPEC's table.
FOLL = enum.IntFlag("FOLL", {name[len("FOLL_"):]: getattr(C, name)
                             for name in sorted(vars(C), key=lambda n: getattr(C, n))
                             if name.startswith("FOLL_")})
FOLL.__doc__ = "gup_flags, with Linux 6.5's values (SPEC §1.1)."


class VM(enum.IntFlag):
    """vm_area_struct.vm_flags (include/linux/mm.h)."""

    NONE = 0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4
    SHARED = 0x8
    MAYREAD = 0x10
    MAYWRITE = 0x20
    MAYEXEC = 0x40
    MAYSHARE = 0x80
    GROWSDOWN = 0x100
    PFNMAP = 0x400
    LOCKED = 0x2000
    IO = 0x4000
    SEQ_READ = 0x8000
    RAND_READ = 0x10000
    DONTCOPY = 0x20000
    DONTEXPAND = 0x40000
    LOCKONFAULT = 0x80000
    HUGETLB = 0x400000
    WIPEONFORK = 0x2000000
    DONTDUMP = 0x4000000
    SOFTDIRTY = 0x8000000
    MIXEDMAP = 0x10000000
    HUGEPAGE = 0x20000000
    NOHUGEPAGE = 0x40000000


class PROT(enum.IntFlag):
    NONE = 0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4


class MAP(enum.IntFlag):
    SHARED = 0x01
    PRIVATE = 0x02
    FIXED = 0x10
    ANONYMOUS = 0x20
    LOCKED = 0x2000
    NORESERVE = 0x4000
    POPULATE = 0x8000
    HUGETLB = 0x40000
    FIXED_NOREPLACE = 0x100000


class MS(enum.IntFlag):
    ASYNC = 1
    INVALIDATE = 2
    SYNC = 4


def _from_c(prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: getattr(C, name) for name in sorted(vars(C), key=lambda n: getattr(C, n))
            if name.startswith(prefix)}


# madvise(2) advice: one value, not a set of bits; the values are the C
# core's (csrc/pygup.h), the x86-64 uapi's.  Only the advice pygup models:
# any other number is EINVAL, as unknown advice is for the kernel.
MADV = enum.IntEnum("MADV", _from_c("MADV_"))
MADV.__doc__ = "madvise(2) advice (asm-generic/mman-common.h values, from the C core)."
MREMAP = enum.IntFlag("MREMAP", _from_c("MREMAP_"))
MREMAP.__doc__ = "mremap(2) flags (linux/mman.h values, from the C core)."
MLOCK = enum.IntFlag("MLOCK", _from_c("MLOCK_"))
MLOCK.__doc__ = "mlock2(2) flags."
MCL = enum.IntFlag("MCL", _from_c("MCL_"))
MCL.__doc__ = "mlockall(2) flags."
FALLOC = enum.IntFlag("FALLOC", _from_c("FALLOC_FL_"))
FALLOC.__doc__ = "fallocate(2) modes (linux/falloc.h values, from the C core)."


def _member_of(int_op):
    """``&`` / ``|`` of an IntFlag as enum.Flag's own do it (the same
    member, NotImplemented for a non-int), but the result's member looked
    up in the class's value map first: Flag's way goes through the enum
    metaclass's ``__call__`` every time, about three times the cost, and the
    model does several such operations per call."""
    def op(self, other):
        value = int_op(self, other)
        if value is NotImplemented:
            return value
        member = self._value2member_map_.get(value)
        return member if member is not None else self.__class__(value)
    op.__name__ = int_op.__name__
    return op


def fast_flag_ops(cls: type) -> type:
    """Give an IntFlag class the cheaper ``&`` / ``|`` (_member_of).  Set
    after the class is made: the enum metaclass puts Flag's own methods on
    every Flag class it creates, over any the class body defines."""
    for name, int_op in (("__and__", int.__and__), ("__rand__", int.__and__),
                         ("__or__", int.__or__), ("__ror__", int.__or__)):
        setattr(cls, name, _member_of(int_op))
    return cls


for _flags in (FOLL, VM, PROT, MAP, MS, MREMAP, MLOCK, MCL, FALLOC):
    fast_flag_ops(_flags)


def int_arg(value, name: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``value`` as a Python int: any integer (numpy's too, through
    ``__index__``) but a bool, else a TypeError naming ``name``; outside
    ``lo..hi`` (inclusive, where given) a ValueError naming it."""
    if type(value) is int:               # the common case, without a call
        n = value
    else:
        if isinstance(value, (bool, float)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        try:
            n = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        lo_s = "" if lo is None else f"{lo}"
        hi_s = "" if hi is None else (f"{hi:#x}" if hi > 1 << 20 else f"{hi}")
        raise ValueError(f"{name} must be in {lo_s}..{hi_s}, got {n}")
    return n


def bool_arg(value, name: str) -> bool:
    """``value`` if it is a bool (or 0 / 1), else a TypeError naming
    ``name``: a string such as "no" is not silently true."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):
        try:
            n = operator.index(value)
        except TypeError:
            n = None
        if n in (0, 1):
            return bool(n)
    raise TypeError(f"{name} must be a bool, got {value!r}")


@functools.lru_cache(maxsize=None)
def _known_bits(enum_type: type[enum.IntFlag]) -> int:
    """Every bit a member of ``enum_type`` defines (the classes are fixed
    once made: one pass per class, not one per call)."""
    known = 0
    for member in enum_type:
        known |= int(member)
    return known


def check_flags(value, enum_type: type[enum.IntFlag], name: str) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` when it
    is not an int or has bits ``enum_type`` does not define."""
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int or {enum_type.__name__}, got {type(value).__name__}")
    value = operator.index(value)
    known = _known_bits(enum_type)
    if value < 0 or value & ~known:
        raise ValueError(f"{name} has unknown {enum_type.__name__} bits: {value & ~known:#x}"
                         if value >= 0 else f"{name} must not be negative")
    return int(value)


# where Python's table has a synonym, the name the kernel's code uses
_KERNEL_NAMES = {_errno.EOPNOTSUPP: "EOPNOTSUPP", _errno.EAGAIN: "EAGAIN"}


def errno_name(err: int) -> str:
    """'EFAULT' for 14 (or -14); '0' for success."""
    err = abs(err)
    if not err:
        return "0"
    return _KERNEL_NAMES.get(err) or _errno.errorcode.get(err, str(err))


@functools.lru_cache(maxsize=None)
def _single_bits(enum_type: type[enum.IntFlag]) -> tuple[tuple[int, str], ...]:
    return tuple((m.value, m.name) for m in enum_type if m.value and m.value & (m.value - 1) == 0)


def flag_names(enum_type: type[enum.IntFlag], value: int) -> str:
    """'LONGTERM|WRITE' for FOLL(0x101); '0' for no bits."""
    value = int(value)
    bits = _single_bits(enum_type)
    names = [name for v, name in bits if value & v]
    rest = value & ~sum(v for v, _ in bits)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


# Plain-int copies of every FOLL_* and VM_* flag, under the kernel's names
# (FOLL_WRITE, VM_SHARED, ...), for the hot paths: in CPython 3.11 reading an
# IntFlag member or combining two costs about a microsecond, a plain int
# tens of nanoseconds (issue 14).  The enums stay the public, printable form.
globals().update({f"FOLL_{m.name}": int(m) for m in FOLL})
globals().update({f"VM_{m.name}": int(m) for m in VM})
FOLL_ALL: int = sum(int(m) for m in FOLL)          # every bit some FOLL flag defines
