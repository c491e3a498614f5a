/*
 * lib/report.c - the violation ring that PG_BUG_ON / PG_WARN_ON write and
 * Python drains, and the per-thread shards of the pin statistics.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lib/report.h"

void pg_report_init(pg_machine *m)
{
    pg_spin_init(&m->viol_lock);
}

void pg_violation_record(pg_machine *m, const char *kind, const char *file,
                         int line, const char *fmt, ...)
{
    char msg[PG_VIOL_MSG];
    const char *base = strrchr(file, '/');
    int n = snprintf(msg, sizeof(msg), "%s %s:%d: ", kind,
                     base ? base + 1 : file, line);
    if (n < 0)
        n = 0;
    if ((size_t)n < sizeof(msg)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
        va_end(ap);
    }

    pg_raw_spin_lock(&m->viol_lock);
    if (m->viol_count < PG_VIOL_RING) {
        unsigned slot = (m->viol_first + m->viol_count) % PG_VIOL_RING;
        memcpy(m->viol_msg[slot], msg, sizeof(msg));
        m->viol_count++;
    } else {
        /* keep the oldest messages (the first failure explains the rest);
         * count what did not fit */
        m->viol_dropped++;
    }
    pg_fetch_add_relaxed(&m->viol_pending, 1);
    pg_fetch_add_relaxed(&m->viol_total, 1);
    pg_raw_spin_unlock(&m->viol_lock);
}

int pg_violation_count(pg_machine *m)
{
    return pg_load_acquire(&m->viol_pending);
}

uint64_t pg_violation_total(pg_machine *m)
{
    return pg_load_acquire(&m->viol_total);
}

int pg_violation_pop(pg_machine *m, char *buf, int buflen)
{
    int got = 0;
    if (!buf || buflen <= 0)
        return -PG_EINVAL;
    buf[0] = '\0';
    pg_raw_spin_lock(&m->viol_lock);
    if (m->viol_count) {
        snprintf(buf, (size_t)buflen, "%s", m->viol_msg[m->viol_first]);
        m->viol_first = (m->viol_first + 1) % PG_VIOL_RING;
        m->viol_count--;
        pg_fetch_sub_relaxed(&m->viol_pending, 1);
        got = 1;
    } else if (m->viol_dropped) {
        snprintf(buf, (size_t)buflen,
                 "%u more violations (ring of %d full, messages dropped)",
                 m->viol_dropped, PG_VIOL_RING);
        pg_fetch_sub_relaxed(&m->viol_pending, (int)m->viol_dropped);
        m->viol_dropped = 0;
        got = 1;
    }
    pg_raw_spin_unlock(&m->viol_lock);
    return got;
}

/* ---- pin statistics ----------------------------------------------------- */

unsigned pg_stat_shard(void)
{
    static _Atomic unsigned next;
    static _Thread_local unsigned shard = ~0u;
    if (shard == ~0u)
        shard = pg_fetch_add_relaxed(&next, 1) % PG_PIN_STAT_SHARDS;
    return shard;
}
