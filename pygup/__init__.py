"""pygup: a Linux get_user_pages (GUP) emulator.

The public API: a ``Machine`` with memory, CPUs, file systems and processes;
the flag sets; and the patch-1 predicates of the Linux 6.5 series.
"""
from pygup.config.mutants import MUTANTS, Mutant
from pygup.config.policy import CHANGES, POLICIES, Change, Policy, policy_for
from pygup.errors import IrqsDisabledError
from pygup.flags import (FALLOC, FOLL, MADV, MAP, MCL, MLOCK, MREMAP, MS, PROT, VM, GupError,
                         InvariantError)
from pygup.kernel.fs import PRESETS, FsType, FsWarning
from pygup.kernel.mm import MM, PTE
from pygup.kernel.process import Process
from pygup.kernel.vfs import File, FileSystem
from pygup.machine import Folio, FolioFlag, Machine
from pygup.kernel.vma import (
    VMA,
    vma_fs_can_writeback,
    vma_is_anonymous,
    vma_is_shared_writable,
    vma_needs_dirty_tracking,
    vma_wants_writenotify,
)

__all__ = [
    "FALLOC", "FOLL", "MADV", "MAP", "MCL", "MLOCK", "MREMAP", "MS", "PROT", "VM", "GupError",
    "InvariantError", "IrqsDisabledError",
    "PRESETS", "File", "FileSystem", "FsType", "FsWarning",
    "Folio", "FolioFlag", "Machine", "MM", "MUTANTS", "Mutant", "PTE", "Process", "POLICIES", "Policy",
    "CHANGES", "Change", "policy_for",
    "VMA", "vma_fs_can_writeback", "vma_is_anonymous", "vma_is_shared_writable",
    "vma_needs_dirty_tracking", "vma_wants_writenotify",
]
__version__ = "0.1.0"
