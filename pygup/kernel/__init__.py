"""The emulated kernel: file systems and the page cache, VMAs, faults,
writeback, migration, GUP, the mm and the system calls.  Every model object
holds the ``Kernel`` context (``context.py``) and reaches the C core through
it; nothing here imports ``pygup.machine`` or anything above it."""
