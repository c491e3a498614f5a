/*
 * lib/report.h - the ground of the core: how C reports what it finds.
 *
 * PG_BUG_ON / PG_WARN_ON evaluate to the truth of cond, so they can guard
 * the refusal that follows:  if (PG_BUG_ON(m, x < 0, "...", x)) return ...;
 * They never abort (CPython builds with -DNDEBUG and aborting would kill
 * the interpreter): the message goes into the machine's bounded ring and
 * Python raises pygup.InvariantError.  The format is printf-like.
 *
 * The pin statistics (nr_foll_pin_acquired / _released) are sharded per
 * thread so that pinners on different CPUs do not fight over one line.
 */
#ifndef PYGUP_LIB_REPORT_H
#define PYGUP_LIB_REPORT_H

#include "internal.h"

void pg_report_init(pg_machine *m);

void pg_violation_record(pg_machine *m, const char *kind, const char *file,
                         int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6), cold)); /* cold: hot loops keep it out of line */

#define PG_BUG_ON(m, cond, ...)                                           \
    (__builtin_expect(!!(cond), 0)                                        \
         ? (pg_violation_record((m), "BUG", __FILE__, __LINE__, __VA_ARGS__), \
            1)                                                            \
         : 0)
#define PG_WARN_ON(m, cond, ...)                                          \
    (__builtin_expect(!!(cond), 0)                                        \
         ? (pg_violation_record((m), "WARN", __FILE__, __LINE__, __VA_ARGS__), \
            1)                                                            \
         : 0)

/* this thread's shard of the pin statistics */
unsigned pg_stat_shard(void);

static inline void pg_count_pins(pg_machine *m, bool acquired, uint64_t n)
{
    unsigned s = pg_stat_shard();
    pg_fetch_add_relaxed(acquired ? &m->pin_stats[s].acquired : &m->pin_stats[s].released, n);
}

#endif /* PYGUP_LIB_REPORT_H */
