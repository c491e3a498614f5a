/*
 * lib/fault_inject.h - failure injection for the core's "can fail" paths:
 * a countdown per kind of allocation (PG_FAIL_* in pygup.h) that Python
 * sets with pg_fail_nth(); the allocator asks pg_should_fail() and, when it
 * fires, fails the way a real allocation failure does (-PG_ENOMEM / NULL).
 * Off, the question is one relaxed load.
 */
#ifndef PYGUP_LIB_FAULT_INJECT_H
#define PYGUP_LIB_FAULT_INJECT_H

#include "internal.h"

bool pg_should_fail_slow(pg_machine *m, int kind);

/* should_fail(): true exactly once, at the nth call after pg_fail_nth() */
static inline bool pg_should_fail(pg_machine *m, int kind)
{
    return __builtin_expect(pg_load_relaxed(&m->fail_nth[kind]) != 0, 0) &&
           pg_should_fail_slow(m, kind);
}

#endif /* PYGUP_LIB_FAULT_INJECT_H */
