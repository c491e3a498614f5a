"""pygup's exceptions (kept apart so the lowest layer can raise them)."""
from __future__ import annotations

import errno as _errno


class GupError(OSError):
    """A kernel-style failure: ``errno`` is the Linux errno (positive)."""

    def __init__(self, err: int, what: str = ""):
        msg = _errno.errorcode.get(err, str(err))
        super().__init__(err, f"{msg}: {what}" if what else msg)


class InvariantError(AssertionError):
    """The C core (or a model check) caught an invariant violation."""


class IrqsDisabledError(GupError, RuntimeError):
    """A call that may sleep (wait for other CPUs' IPI acknowledgements or a
    grace period) was made with IRQs disabled on the calling CPU: the
    kernel's "sleeping function called from invalid context".  An OSError
    with errno EDEADLK, so callers that handle OSError handle it; also a
    RuntimeError, as the kind of misuse it is."""

    def __init__(self, what: str):
        super().__init__(_errno.EDEADLK, what)
