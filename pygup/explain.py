"""``explain()``: run a GUP call as the kernel would and say which rule
decided — the same errno can come from VM_IO, secretmem, a missing VM_WRITE
or the dirty-tracking rule, and users need to know which.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Iterator, Optional

from pygup.flags import FOLL, errno_name, flag_names
from pygup.kernel.gup import gup_slow, internal_get_user_pages_fast, put_pages, unpin_user_pages
from pygup.kernel.trace import Step, Trace

if TYPE_CHECKING:  # pragma: no cover
    from pygup.kernel.context import Kernel
    from pygup.kernel.mm import MM

__all__ = ["Explanation", "explain", "trace_calls", "APIS"]


APIS = {
    "get_user_pages": (FOLL.TOUCH, False, False),
    "get_user_pages_remote": (FOLL.TOUCH | FOLL.REMOTE, False, False),
    "pin_user_pages": (FOLL.PIN, True, False),
    "pin_user_pages_remote": (FOLL.PIN | FOLL.TOUCH | FOLL.REMOTE, True, False),
    "get_user_pages_fast": (FOLL.GET, False, True),
    "pin_user_pages_fast": (FOLL.PIN, True, True),
}


@dataclasses.dataclass
class Explanation:
    api: str
    gup_flags: int
    ret: int
    trace: Trace

    @property
    def decided(self) -> Optional[Step]:
        return self.trace.decided

    def _repr_html_(self) -> str:
        return self.trace._repr_html_()

    def format(self) -> str:
        res = f"{self.ret}" if self.ret >= 0 else f"-{errno_name(self.ret)}"
        return (f"{self.api}(gup_flags={flag_names(FOLL, self.gup_flags)}) = {res}\n"
                + self.trace.format())


def explain(mm: "MM", start: int, nr_pages: int, gup_flags: int,
            api: str = "pin_user_pages") -> Explanation:
    """Run the GUP call as the kernel would, recording every rule checked
    (its inputs, its verdict) and which one decided; then release whatever
    it took.  Faults it takes stay taken, as after a real call."""
    if api not in APIS:
        raise ValueError(f"api must be one of {sorted(APIS)}, got {api!r}")
    to_set, pin_api, fast = APIS[api]
    trace = Trace()
    if fast:
        ret, pages = internal_get_user_pages_fast(mm, start, nr_pages, gup_flags, to_set, trace)
    else:
        ret, pages = gup_slow(mm, start, nr_pages, gup_flags, to_set, pin_api, trace=trace)
    if len(pages):
        if pages.pinned:
            unpin_user_pages(mm.kernel, pages)
        else:
            put_pages(mm.kernel, pages)
    return Explanation(api, gup_flags, ret, trace)


@contextlib.contextmanager
def trace_calls(kernel: "Kernel", trace: Optional[Trace] = None) -> Iterator[Trace]:
    """Inside the block every GUP call on ``kernel`` (whoever makes it: a
    caller from ``pygup.callers``, a test) records its checks into
    ``trace``, so that a refusal deep in a caller names its rule."""
    if trace is None:
        trace = Trace()
    if kernel.trace_sink is not None:
        raise RuntimeError("trace_calls blocks do not nest")
    kernel.trace_sink = trace
    try:
        yield trace
    finally:
        kernel.trace_sink = None
