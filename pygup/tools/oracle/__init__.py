"""The live-kernel oracle: the same scenarios on a real kernel (this host's,
or a Debian kernel booted under qemu) and on a pygup Machine, side by side."""
