"""Configuration of an emulated kernel: which kernel's behaviour (policy) and
which historic bugs are planted back (protection switches).  Imports only the
ground (``pygup.flags``, ``pygup._native``)."""
