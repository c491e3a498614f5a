"""The decision recorder: every GUP rule writes what it checked, its inputs
and its verdict to a ``Trace``, so that ``explain`` can say which rule
decided.  ``NO_TRACE`` records nothing and costs one call: inputs that
take work to build (flag names, the predicates behind a verdict) go in
``lazy``, a function called only when a real ``Trace`` records."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from pygup.flags import errno_name



@dataclasses.dataclass
class Step:
    rule: str                 # the kernel function / check, by name
    inputs: dict[str, Any]
    verdict: str              # "pass", "fail", "skip"
    errno: int = 0            # negative errno when it failed


@dataclasses.dataclass
class Trace:
    steps: list[Step] = dataclasses.field(default_factory=list)
    enabled = True                  # a class attribute: does this trace record?

    def check(self, rule: str, failed: bool, err: int = 0,
              lazy: Optional[Callable[[], dict[str, Any]]] = None, **inputs: Any) -> bool:
        if lazy is not None:
            inputs.update(lazy())
        self.steps.append(Step(rule, inputs, "fail" if failed else "pass", -err if failed else 0))
        return failed

    @property
    def decided(self) -> Optional[Step]:
        """The step that refused, or None if every step passed."""
        for s in self.steps:
            if s.verdict == "fail":
                return s
        return None

    def format(self) -> str:
        lines = []
        for s in self.steps:
            args = ", ".join(f"{k}={v}" for k, v in s.inputs.items())
            res = s.verdict if s.verdict != "fail" else f"FAIL -> -{errno_name(s.errno)}"
            lines.append(f"  {s.rule:<38} {res:<16} {args}")
        d = self.decided
        lines.append(f"  decided by: {d.rule} (-{errno_name(d.errno)})" if d else "  decided: allowed")
        return "\n".join(lines)


    def _repr_html_(self) -> str:
        from pygup.kernel.html import grid_table
        d = self.decided
        title = f"decided by {d.rule} (-{errno_name(d.errno)})" if d else "allowed"
        rows = [(s.rule, s.verdict if s.verdict != "fail" else f"FAIL -{errno_name(s.errno)}",
                 ", ".join(f"{k}={v}" for k, v in s.inputs.items())) for s in self.steps]
        return grid_table(title, ["rule", "verdict", "inputs"], rows)


class _NullTrace(Trace):
    enabled = False

    def check(self, rule: str, failed: bool, err: int = 0, lazy=None, **inputs: Any) -> bool:
        return failed


NO_TRACE = _NullTrace()
