"""Tools built on the emulator: the command line, benchmarks, native stress
drivers, the plain-Python reference GUP-fast, the fuzzing harness, schedule
exploration and the live-kernel oracle.  Nothing below this package imports
it."""
