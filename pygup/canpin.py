"""``can_pin()``: "can my users pin X?" — backings × callers × kernel
policies in one table, each refused cell with the rule that refused it and
the advice that rule implies.

Every cell is a fresh ``Machine``: the backing is mapped and faulted in by
a user read, then the caller (``pygup.callers``: io_uring, RDMA, VFIO,
O_DIRECT, /proc/pid/mem, process_vm_*, vmsplice) runs for real with its own
entry point and flags while ``trace_calls`` records every rule its GUP
calls check.  Nothing here restates a rule: the verdict is what the model
returns, the rule is the trace's deciding step.
"""
from __future__ import annotations

import dataclasses
import re
import textwrap
from typing import Callable, Iterable, Optional

from pygup import callers
from pygup.config import policy as policy_mod
from pygup.config.policy import POLICIES
from pygup.errors import GupError
from pygup.explain import trace_calls
from pygup.flags import MAP, PROT, errno_name
from pygup.kernel.fs import PRESETS
from pygup.kernel.trace import Trace
from pygup.machine import Machine

__all__ = ["BACKINGS", "CALLERS", "Cell", "can_pin", "explain_caller", "format_matrix",
           "matrix_json", "policy_names"]

HUGE = 2 << 20


# ---------------------------------------------------------------------------
# backings: what the user's buffer is

@dataclasses.dataclass(frozen=True)
class Backing:
    name: str
    what: str
    make: Callable[[Machine], tuple[object, int, int]]   # -> (file or None, size, MAP_*)


def _fs_backing(preset: str, private: bool) -> Backing:
    size = HUGE if PRESETS[preset].kind == "hugetlb" else 4096
    kind = MAP.PRIVATE if private else MAP.SHARED

    def make(m: Machine):
        return m.mount(preset).create("buf", size), size, kind
    return Backing(preset + ("-private" if private else ""),
                   f"a {'MAP_PRIVATE' if private else 'MAP_SHARED'} {preset} file", make)


def _backings() -> dict[str, Backing]:
    out = {
        "anon": Backing("anon", "anonymous memory (malloc, MAP_PRIVATE|MAP_ANONYMOUS)",
                        lambda m: (None, 4096, MAP.PRIVATE | MAP.ANONYMOUS)),
        "anon-shared": Backing("anon-shared", "MAP_SHARED|MAP_ANONYMOUS (shmem)",
                               lambda m: (None, 4096, MAP.SHARED | MAP.ANONYMOUS)),
        "memfd": Backing("memfd", "memfd_create() (shmem), MAP_SHARED",
                         lambda m: (m.memfd_create("buf", 4096), 4096, MAP.SHARED)),
        "memfd-hugetlb": Backing("memfd-hugetlb", "memfd_create(MFD_HUGETLB), MAP_SHARED",
                                 lambda m: (m.memfd_create("buf", HUGE, hugetlb=True), HUGE,
                                            MAP.SHARED)),
        "memfd-private": Backing("memfd-private", "memfd_create() (shmem), MAP_PRIVATE",
                                 lambda m: (m.memfd_create("buf", 4096), 4096, MAP.PRIVATE)),
        "secretmem": Backing("secretmem", "memfd_secret(), MAP_SHARED",
                             lambda m: (m.memfd_secret(4096), 4096, MAP.SHARED)),
        # secretmem_mmap() refuses it: the cell says so
        "secretmem-private": Backing("secretmem-private", "memfd_secret(), MAP_PRIVATE",
                                     lambda m: (m.memfd_secret(4096), 4096, MAP.PRIVATE)),
    }
    for preset in PRESETS:
        if preset == "secretmem":       # memfd_secret() is the way in, not a mount
            continue
        for private in (False, True):
            b = _fs_backing(preset, private)
            out[b.name] = b
    out["dax"] = dataclasses.replace(out["fsdax"], name="dax")
    out["dax-private"] = dataclasses.replace(out["fsdax-private"], name="dax-private")
    return out


BACKINGS: dict[str, Backing] = _backings()


# ---------------------------------------------------------------------------
# callers: who pins it, with the entry point and flags it really uses

@dataclasses.dataclass(frozen=True)
class Caller:
    name: str
    what: str
    run: Callable[[object, int, int], int]     # (process, addr, size) -> syscall-style ret
    ok: Callable[[int, int], bool]             # (ret, size) -> did it get the whole buffer
    device_writes: bool                        # the pin is FOLL_WRITE


def _zero_ok(ret: int, size: int) -> bool:
    return ret == 0


def _count_ok(ret: int, size: int) -> bool:      # pages pinned
    return ret == -(-size // 4096)


def _bytes_ok(ret: int, size: int) -> bool:
    return ret == size


def _value_ok(ret: int, size: int) -> bool:      # a value read (>= 0) or -errno
    return ret >= 0


CALLERS: dict[str, Caller] = {c.name: c for c in [
    Caller("io_uring", "IORING_REGISTER_BUFFERS (pin_user_pages[_fast] WRITE|LONGTERM)",
           callers.io_uring_register_buffers, _zero_ok, True),
    Caller("rdma", "ib_umem_get, writable MR (pin_user_pages_fast WRITE|LONGTERM)",
           lambda p, a, n: callers.rdma_umem_get(p, a, n, writable=True), _zero_ok, True),
    Caller("rdma-ro", "ib_umem_get, read-only MR (pin_user_pages_fast LONGTERM)",
           lambda p, a, n: callers.rdma_umem_get(p, a, n, writable=False), _zero_ok, False),
    Caller("vfio", "VFIO_IOMMU_MAP_DMA, read+write (pin_user_pages_remote WRITE|LONGTERM)",
           lambda p, a, n: callers.vfio_pin(p, a, n, writable=True), _count_ok, True),
    Caller("vfio-ro", "VFIO_IOMMU_MAP_DMA, read-only (pin_user_pages_remote LONGTERM)",
           lambda p, a, n: callers.vfio_pin(p, a, n, writable=False), _count_ok, False),
    Caller("odirect", "O_DIRECT read into the buffer (pin_user_pages_fast WRITE)",
           callers.o_direct_read, _bytes_ok, True),
    Caller("odirect-write", "O_DIRECT write from the buffer (pin_user_pages_fast)",
           callers.o_direct_write, _bytes_ok, False),
    Caller("proc-mem", "write to /proc/pid/mem (get_user_pages_remote FORCE|WRITE)",
           lambda p, a, n: callers.proc_mem_write(p, a, 0x5A5A), lambda r, n: r == 8, True),
    Caller("proc-mem-read", "read of /proc/pid/mem (get_user_pages_remote FORCE)",
           lambda p, a, n: callers.proc_mem_read(p, a), _value_ok, False),
    Caller("process_vm_writev", "process_vm_writev (pin_user_pages_remote WRITE)",
           lambda p, a, n: callers.process_vm_writev(p, a, 0x5A5A), lambda r, n: r == 8, True),
    Caller("process_vm_readv", "process_vm_readv (pin_user_pages_remote)",
           lambda p, a, n: callers.process_vm_readv(p, a), _value_ok, False),
    Caller("vmsplice", "vmsplice to a pipe (get_user_pages_fast, FOLL_GET)",
           callers.vmsplice, _bytes_ok, False),
]}


# ---------------------------------------------------------------------------
# kernel policies and the history of their rules

def _version_key(name: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", name))


def policy_names() -> list[str]:
    """The presets (``POLICIES``), oldest first."""
    return sorted(POLICIES, key=_version_key)


def _field(entry, key: str, index: int):
    """One field of a ``CHANGES`` entry, whatever its shape (an object with
    attributes, a mapping, or a (name, version, commit, title) tuple)."""
    if hasattr(entry, key):
        return getattr(entry, key)
    if isinstance(entry, dict):
        return entry.get(key)
    if isinstance(entry, (tuple, list)) and len(entry) > index:
        return entry[index]
    return None


def since(switch: str, value: bool = True) -> Optional[str]:
    """When the kernel started behaving as ``switch == value``: "6.5
    (commit 8ac268436e6d "title")" from the policy module's ``CHANGES``
    table where it has one, else the oldest preset that behaves so after
    one that does not (no commit then); None if no preset changes it."""
    for entry in getattr(policy_mod, "CHANGES", ()) or ():
        sets = _field(entry, "sets", 99) or ()
        switches = {s[0]: s[1] for s in sets if isinstance(s, (tuple, list)) and len(s) == 2}
        if switches.get(switch, None if _field(entry, "name", 0) != switch else True) != value:
            continue
        version, commit, title = (_field(entry, "version", 1), _field(entry, "commit", 2),
                                  _field(entry, "title", 3))
        text = str(version)
        if commit:
            text += f" (commit {str(commit)[:12]}" + (f' "{title}"' if title else "") + ")"
        elif title:
            text += f' ("{title}")'
        return text
    names = policy_names()
    for older, newer in zip(names, names[1:]):
        if (getattr(POLICIES[older], switch, None) != value
                and getattr(POLICIES[newer], switch, None) == value):
            return newer
    return None


# ---------------------------------------------------------------------------
# advice: what the refusing rule implies the user should do instead

def advice(rule: Optional[str], backing: str, caller: str) -> tuple[str, Optional[str]]:
    """(advice, since) for a refusal by ``rule``."""
    c = CALLERS[caller]
    ro = {"rdma": "rdma-ro", "vfio": "vfio-ro", "odirect": "odirect-write",
          "proc-mem": "proc-mem-read", "process_vm_writev": "process_vm_readv"}.get(caller)
    drop_write = (f"; if the device only reads the buffer, drop FOLL_WRITE ({ro})"
                  if c.device_writes and ro else "")
    if rule == "writable_file_mapping_allowed":
        return ("the file system tracks dirty pages (page_mkwrite, writeback), so a long-term "
                "writable pin of its MAP_SHARED mapping is refused: put the buffer in memfd / "
                "tmpfs (shmem), hugetlbfs or anonymous memory" + drop_write,
                since("writable_file_mapping_check", True))
    if rule == "io_sqe_buffer_register: file-backed buffer":
        return ("io_uring itself refused file-backed buffers other than shmem and hugetlbfs: "
                "use memfd, hugetlbfs or anonymous memory; newer kernels leave the decision "
                "to GUP", _dropped("io_uring_file_check"))
    if rule == "vma_is_secretmem":
        return ("memfd_secret() memory is removed from the kernel's direct map and is never "
                "reachable by GUP, by design: keep device buffers out of it", None)
    if rule == "FOLL_LONGTERM on fsdax":
        return ("fsdax pages are the file's own blocks and the file system cannot move them "
                "under a long-term pin: use a non-DAX mount, device-dax, or anonymous memory",
                None)
    if rule == "VM_IO|VM_PFNMAP":
        return ("the mapping has no struct pages (VM_IO / VM_PFNMAP): GUP cannot pin it", None)
    if rule == "FOLL_FORCE write to hugetlb":
        return ("a forced write into a read-only private hugetlb mapping: newer kernels break "
                "COW for it", since("hugetlb_force_write", True))
    if rule and rule.startswith("write to a !VM_WRITE"):
        return ("the mapping is read-only: map it PROT_WRITE" + drop_write, None)
    if rule == "find_vma":
        return ("nothing is mapped there", None)
    return ("", None)


def _dropped(switch: str) -> Optional[str]:
    when = since(switch, False)
    return f"dropped in {when}" if when else None


# ---------------------------------------------------------------------------
# one cell

@dataclasses.dataclass
class Cell:
    backing: str
    caller: str
    policy: str
    allowed: bool
    ret: int
    errno: Optional[str]           # "EFAULT", ... when refused with an errno
    rule: Optional[str]            # the check that refused
    advice: str = ""
    since: Optional[str] = None
    trace: Optional[Trace] = dataclasses.field(default=None, repr=False)

    def short(self) -> str:
        if self.allowed:
            return "ok"
        return self.errno or f"ret={self.ret}"

    def to_json(self, with_trace: bool = False) -> dict:
        d = {k: getattr(self, k) for k in ("backing", "caller", "policy", "allowed", "ret",
                                           "errno", "rule", "advice", "since")}
        if with_trace and self.trace is not None:
            d["trace"] = [dataclasses.asdict(s) for s in self.trace.steps]
        return d


def _check_choice(value: str, choices: Iterable[str], what: str) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}; got {value!r}")


def _check_policy(policy: str) -> None:
    """A preset name, or any version the policy module can compute."""
    if policy in POLICIES:
        return
    resolve = getattr(policy_mod, "resolve", None)
    if resolve is None or not isinstance(policy, str):
        _check_choice(policy, POLICIES, "policy")
    resolve(policy)                # its ValueError says what it accepts


def run_cell(backing: str, caller: str, policy: str, prot: str = "rw",
             prefault: bool = True) -> Cell:
    """One backing, one caller, one policy on a fresh machine."""
    _check_choice(backing, BACKINGS, "backing")
    _check_choice(caller, CALLERS, "caller")
    _check_policy(policy)
    b, c = BACKINGS[backing], CALLERS[caller]
    m = Machine(policy=policy, memory="64MiB", movable="8MiB", cpus=2)
    trace = Trace()
    file, size, flags = b.make(m)
    p = m.spawn()
    prot_bits = PROT.NONE
    for ch in prot:
        prot_bits |= {"r": PROT.READ, "w": PROT.WRITE, "x": PROT.EXEC}[ch]
    try:
        addr = p.mmap(size, prot_bits, flags, file=file)
    except GupError as e:
        trace.check("mmap", True, e.errno, flags=str(MAP(flags)), backing=backing)
        return Cell(backing, caller, policy, False, -e.errno, errno_name(-e.errno), "mmap",
                    f"mmap itself refuses this mapping ({e.strerror})", None, trace)
    if prefault and prot_bits & PROT.READ:
        p.read(addr)
    with trace_calls(m.kernel, trace):
        ret = c.run(p, addr, size)
    ok = c.ok(ret, size)
    step = trace.decided
    err = errno_name(ret) if ret < 0 else (errno_name(step.errno) if step and step.errno else None)
    rule = step.rule if step is not None and not ok else None
    text, when = advice(rule, backing, caller) if not ok else ("", None)
    p.exit()
    m.check()
    return Cell(backing, caller, policy, ok, ret, None if ok else err, rule, text, when, trace)


def can_pin(backings: Iterable[str], callers_: Iterable[str],
            policies: Optional[Iterable[str]] = None, prot: str = "rw",
            prefault: bool = True) -> list[Cell]:
    """Every (backing, caller, policy) cell, in that nesting order."""
    backings, callers_ = list(backings), list(callers_)
    policies = list(policies) if policies is not None else policy_names()
    for b in backings:
        _check_choice(b, BACKINGS, "backing")
    for c in callers_:
        _check_choice(c, CALLERS, "caller")
    for pol in policies:
        _check_policy(pol)
    if not set(prot) <= set("rwx"):
        raise ValueError(f"prot must be letters from 'rwx', got {prot!r}")
    return [run_cell(b, c, pol, prot, prefault) for b in backings for c in callers_
            for pol in policies]


def explain_caller(caller: str, backing: str, policy: str, prot: str = "rw",
                   prefault: bool = True) -> Cell:
    """One cell with its full trace (``Cell.trace``): ``pygup explain --caller``."""
    return run_cell(backing, caller, policy, prot, prefault)


# ---------------------------------------------------------------------------
# output

def format_matrix(cells: list[Cell]) -> str:
    """The table: a row per (backing, caller), a column per policy; each
    refusal marked [n], the notes below say the rule and the advice."""
    policies: list[str] = list(dict.fromkeys(c.policy for c in cells))
    rows: dict[tuple[str, str], dict[str, Cell]] = {}
    for c in cells:
        rows.setdefault((c.backing, c.caller), {})[c.policy] = c
    notes: dict[tuple, int] = {}
    text_rows = []
    for (b, caller), by_pol in rows.items():
        out = []
        for pol in policies:
            c = by_pol[pol]
            if c.allowed:
                out.append("ok")
                continue
            key = (c.rule, c.errno, c.advice, c.since)
            n = notes.setdefault(key, len(notes) + 1)
            out.append(f"{c.short()} [{n}]")
        text_rows.append((b, caller, out))
    wb = max([len("backing")] + [len(r[0]) for r in text_rows])
    wc = max([len("caller")] + [len(r[1]) for r in text_rows])
    wp = max([len(p) for p in policies] + [len(x) for r in text_rows for x in r[2]])
    lines = [f"{'backing':<{wb}}  {'caller':<{wc}}  " + "  ".join(f"{p:<{wp}}" for p in policies)]
    lines.append("-" * len(lines[0]))
    for b, caller, out in text_rows:
        lines.append(f"{b:<{wb}}  {caller:<{wc}}  " + "  ".join(f"{x:<{wp}}" for x in out))
    if notes:
        lines.append("")
    for (rule, err, text, when), n in notes.items():
        head = f"[{n}] refused by {rule or 'the caller'}" + (f" (-{err})" if err else "")
        if when:
            head += f"; {'' if when.startswith('dropped') else 'refused since '}{when}"
        lines.append(head)
        if text:
            lines.append(textwrap.fill(text, 96, initial_indent="    ",
                                       subsequent_indent="    "))
    return "\n".join(line.rstrip() for line in lines)


def matrix_json(cells: list[Cell], with_trace: bool = False) -> dict:
    return {"policies": list(dict.fromkeys(c.policy for c in cells)),
            "backings": list(dict.fromkeys(c.backing for c in cells)),
            "callers": list(dict.fromkeys(c.caller for c in cells)),
            "cells": [c.to_json(with_trace) for c in cells]}

