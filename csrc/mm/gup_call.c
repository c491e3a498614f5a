/*
 * mm/gup_call.c - one C call for a small GUP call from Python.
 *
 * A one-page pin_user_pages_fast() + unpin_user_pages() used to cross into
 * C five to ten times (the CPU's IRQ state, the walk, the violation ring,
 * the put, the RCU poll of the machine lock's release), each crossing
 * costing more than the pin itself.  The entries here fold those checks
 * around the unchanged entry points of mm/gup.c (whose loops are not
 * repeated here) and re-check every argument: Python's own checks are a
 * shortcut, not a trust boundary.  An entry that cannot finish the call the
 * way the Python path would (IRQs off where that path raises, a scheduler
 * session, whose CPUs switch at the Python path's points) returns
 * -PG_CALL_DECLINED before touching anything; Python then takes its
 * ordinary path, which decides the call.  An entry after which the
 * violation ring holds something returns -PG_CALL_VIOLATION instead of its
 * result, sparing Python a call to ask: Python raises them, as it did
 * after every call (what the entry did stays done).
 */
#include "internal.h"

/* pin_user_pages_fast() / get_user_pages_fast() of a few pages: the
 * lockless walk of pg_gup_fast_why(), which checks the range, the mm and
 * the flags itself.  A range that ends past TASK_SIZE_MAX is declined:
 * internal_get_user_pages_fast()'s access_ok() answer is Python's. */
int64_t pg_gup_fast_call(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                         int64_t nr, uint32_t gup_flags, uint32_t policy, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (nr < 0 || start > PG_TASK_SIZE_MAX ||
        (uint64_t)nr > (PG_TASK_SIZE_MAX - start) >> PG_PAGE_SHIFT)
        return -PG_CALL_DECLINED;
    /* internal_get_user_pages_fast() may fall back to the slow path, which
     * sleeps: with IRQs off only FOLL_FAST_ONLY may walk (Python raises) */
    if (!(gup_flags & PG_FOLL_FAST_ONLY) && pg_cpu_irqs_off(m, cpu))
        return -PG_CALL_DECLINED;
    int64_t got = pg_gup_fast_why(m, cpu, mmid, start, nr, gup_flags, policy, out, NULL);
    return pg_violation_count(m) > 0 ? -PG_CALL_VIOLATION : got;
}

/* unpin_user_pages() / put_page() of an array with the machine lock held
 * by the caller, ending as that lock's release does: the RCU poll, unless
 * the put failed or a violation is pending (Python raises then, first) */
int pg_gup_put_call(pg_machine *m, int cpu, const uint64_t *pfns, int64_t n, int pin)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_load_relaxed(&m->sched_on) || pg_cpu_irqs_off(m, cpu))
        return -PG_CALL_DECLINED;
    int rc = pg_gup_put_pages(m, pfns, n, pin);
    if (pg_violation_count(m) > 0)
        return -PG_CALL_VIOLATION;
    if (rc == 0)
        pg_rcu_poll(m);
    return rc;
}

/* get_user_pages() / pin_user_pages() of a few present pages of one VMA
 * that Python's check_vma_flags() passed: __get_user_pages()'s batch follow
 * and, for a FOLL_LONGTERM pin, check_and_migrate_movable_pages()'s
 * question, all or nothing (pg_follow_range_all()), by a caller holding the
 * machine lock, ending as that lock's release does (the RCU poll).  nr when
 * every page was taken; -PG_CALL_DECLINED when nothing was (a page needs a
 * fault or a migration, a scheduler session runs, IRQs are off): Python's
 * general path then decides the call from the start. */
int64_t pg_gup_slow_call(pg_machine *m, int cpu, uint64_t mmid, uint64_t start, int64_t nr,
                         uint32_t how, int longterm, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu) || nr <= 0)
        return -PG_EINVAL;
    if (pg_load_relaxed(&m->sched_on) || pg_cpu_irqs_off(m, cpu))
        return -PG_CALL_DECLINED;
    int64_t got = pg_follow_range_all(m, cpu, mmid, start, nr, how, longterm, out);
    if (pg_violation_count(m) > 0)
        return -PG_CALL_VIOLATION;
    if (got != nr)
        return got < 0 ? got : -PG_CALL_DECLINED;
    pg_rcu_poll(m);
    return got;
}

/* the slow path's batch follow, pg_follow_range() (its checks) */
int64_t pg_follow_call(pg_machine *m, int cpu, uint64_t mmid, uint64_t start, int64_t nr,
                       uint32_t how, uint64_t *out)
{
    int64_t got = pg_follow_range(m, cpu, mmid, start, nr, how, out);
    return pg_violation_count(m) > 0 ? -PG_CALL_VIOLATION : got;
}

/* check_and_migrate_movable_pages()'s question over an array, without
 * changing anything: the index of the first page whose folio is not
 * long-term pinnable, n when every one is, -PG_EINVAL for a bad pfn or a
 * free folio (Python's per-page loop then raises as it always did) */
int64_t pg_first_unpinnable(pg_machine *m, const uint64_t *pfns, int64_t n)
{
    if (n < 0 || (n > 0 && !pfns))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++) {
        int r = pg_folio_is_longterm_pinnable(m, pfns[i]);
        if (r < 0)
            return -PG_EINVAL;
        if (!r)
            return i;
    }
    return n;
}
