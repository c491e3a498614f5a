"""The decision recorder: inputs that take work to build are built only
when someone traces (issue 14), yet a real Trace still records them all."""
import errno

from pygup import FOLL, MAP, PROT, Machine
from pygup.explain import explain
from pygup.kernel.trace import NO_TRACE, Trace

RW = PROT.READ | PROT.WRITE


def test_lazy_inputs_are_recorded_by_a_real_trace():
    t = Trace()
    assert t.check("rule", True, errno.EFAULT, lazy=lambda: {"built": "yes"}, plain=1)
    assert t.decided.inputs == {"plain": 1, "built": "yes"}
    assert t.decided.errno == -errno.EFAULT


def test_no_trace_never_builds_lazy_inputs():
    def boom():
        raise AssertionError("NO_TRACE built a trace input")
    assert NO_TRACE.check("rule", True, errno.EFAULT, lazy=boom) is True
    assert NO_TRACE.check("rule", False, lazy=boom) is False
    assert not NO_TRACE.enabled and Trace.enabled


def test_explain_still_names_the_flags_it_checked():
    m = Machine(memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap_pfn(4096, RW)
    step = explain(p.mm, a, 1, 0, "get_user_pages").decided
    assert step.rule == "VM_IO|VM_PFNMAP"
    assert "PFNMAP" in step.inputs["vm_flags"]
    b = p.mmap(4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    bad = explain(p.mm, b, 1, FOLL.PIN, "pin_user_pages").decided   # FOLL_PIN is internal
    assert bad.rule == "is_valid_gup_args" and "PIN" in bad.inputs["gup_flags"]


def test_untraced_calls_leave_no_steps_behind():
    """NO_TRACE is shared by every untraced call: the long-term retry
    step it once appended grew without bound."""
    m = Machine(memory="64MiB", movable="16MiB")
    p = m.spawn()
    a = p.mmap(64 * 4096, RW, MAP.PRIVATE | MAP.ANONYMOUS)
    p.mm.get_user_pages(a, 64, FOLL.WRITE, pages=False)     # faulted into ZONE_MOVABLE
    before = len(NO_TRACE.steps)
    ret, pages = p.mm.pin_user_pages(a, 64, FOLL.LONGTERM | FOLL.WRITE)   # migrates, retries
    assert ret == 64
    p.mm.unpin_user_pages(pages)
    assert len(NO_TRACE.steps) == before
