/*
 * lib/fault_inject.c - the countdowns behind pg_should_fail() and their
 * Python knobs.
 */
#include "internal.h"
#include "lib/fault_inject.h"

bool pg_should_fail_slow(pg_machine *m, int kind)
{
    int64_t left = pg_load_relaxed(&m->fail_nth[kind]);
    /* concurrent allocations each take one step; exactly one sees 1 -> 0 */
    while (left > 0) {
        if (pg_cas(&m->fail_nth[kind], &left, left - 1)) {
            if (left != 1)
                return false;
            pg_fetch_add_relaxed(&m->fail_fired[kind], 1);
            return true;
        }
    }
    return false;
}

int pg_fail_nth(pg_machine *m, int kind, int64_t nth)
{
    if (kind < 0 || kind >= PG_FAIL_NR || nth < 0)
        return -PG_EINVAL;
    pg_store_release(&m->fail_nth[kind], nth);
    return 0;
}

int64_t pg_fail_pending(pg_machine *m, int kind)
{
    if (kind < 0 || kind >= PG_FAIL_NR)
        return -PG_EINVAL;
    return pg_load_acquire(&m->fail_nth[kind]);
}

int64_t pg_fail_fired(pg_machine *m, int kind)
{
    if (kind < 0 || kind >= PG_FAIL_NR)
        return -PG_EINVAL;
    return (int64_t)pg_load_acquire(&m->fail_fired[kind]);
}
