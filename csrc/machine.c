/*
 * machine.c - the machine as a whole: creation and teardown (each subsystem
 * initialises its own part), statistics, and the violation ring that
 * PG_BUG_ON / PG_WARN_ON write and Python drains.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

pg_machine *pg_machine_new(uint64_t nr_frames, uint64_t nr_movable,
                           int nr_cpus, int table_free_mode)
{
    /* the normal zone needs at least one block: it holds the zero page */
    if (nr_frames == 0 || nr_frames % PG_PMD_NR || nr_movable % PG_PMD_NR ||
        nr_movable >= nr_frames || nr_frames > (uint64_t)PG_MAX_FRAMES)
        return NULL;
    if (nr_cpus < 1 || nr_cpus > PG_MAX_CPUS)
        return NULL;
    if (table_free_mode != PG_TABLE_FREE_IPI &&
        table_free_mode != PG_TABLE_FREE_RCU)
        return NULL;

    /* calloc: every atomic starts as zero, which is its valid initial
     * state on the platforms we build for (lock-free atomics) */
    pg_machine *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->nr_frames = nr_frames;
    m->nr_movable = nr_movable;
    m->nr_cpus = nr_cpus;
    m->table_free_mode = table_free_mode;
    pg_spin_init(&m->viol_lock);

    pg_rcu_init(m);
    pg_cpus_init(m);
    if (pg_frames_init(m) < 0 || pg_pgtable_init(m) < 0) {
        pg_machine_free(m);
        return NULL;
    }
    return m;
}

void pg_machine_free(pg_machine *m)
{
    if (!m)
        return;
    /* pending RCU callbacks only recycle pool memory, which goes anyway */
    pg_sched_fini(m);
    pg_pgtable_fini(m);
    pg_as_fini(m);
    pg_frames_fini(m);
    free(m);
}

int pg_machine_nr_cpus(pg_machine *m)
{
    return m->nr_cpus;
}

void pg_stats_get(pg_machine *m, struct pg_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    out->nr_frames = m->nr_frames;
    out->nr_free[PG_ZONE_NORMAL] = pg_load_relaxed(&m->zones[0].nr_free);
    out->nr_free[PG_ZONE_MOVABLE] = pg_load_relaxed(&m->zones[1].nr_free);
    out->frame_bytes = m->nr_frames * sizeof(struct pg_frame);
    out->table_pages_live = pg_load_relaxed(&m->table_pages_live);
    out->table_pages_pending = pg_load_relaxed(&m->table_pages_pending);
    pg_spin_lock(&m->pool_lock);
    out->table_bytes =
        (uint64_t)m->table_nr_chunks * PG_TABLE_CHUNK * sizeof(struct pg_table);
    pg_spin_unlock(&m->pool_lock);
    out->as_live = pg_load_relaxed(&m->as_live);
    out->as_pending = pg_load_relaxed(&m->as_pending);
    out->ipis_sent = pg_load_relaxed(&m->ipis_sent);
    out->tlb_shootdowns = pg_load_relaxed(&m->tlb_shootdowns);
    out->tlb_flushed_entries = pg_load_relaxed(&m->tlb_flushed_entries);
    out->rcu_grace_periods = pg_load_relaxed(&m->rcu_grace_periods);
    out->rcu_callbacks_run = pg_load_relaxed(&m->rcu_callbacks_run);
    out->orphans_reaped = pg_load_relaxed(&m->orphans_reaped);
    out->pins_acquired = out->pins_released = 0;
    for (int i = 0; i < PG_PIN_STAT_SHARDS; i++) {
        out->pins_acquired += pg_load_relaxed(&m->pin_stats[i].acquired);
        out->pins_released += pg_load_relaxed(&m->pin_stats[i].released);
    }
}

/* ---- violations --------------------------------------------------------- */

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

    pg_spin_lock(&m->viol_lock);
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
    pg_spin_unlock(&m->viol_lock);
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
    pg_spin_lock(&m->viol_lock);
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
    pg_spin_unlock(&m->viol_lock);
    return got;
}

int64_t pg_set_mutants(pg_machine *m, uint32_t mutants)
{
    if (mutants & ~(uint32_t)PG_MUT_ALL)
        return -PG_EINVAL;
    return pg_xchg(&m->mutants, mutants);
}

unsigned pg_stat_shard(void)
{
    static _Atomic unsigned next;
    static _Thread_local unsigned shard = ~0u;
    if (shard == ~0u)
        shard = pg_fetch_add_relaxed(&next, 1) % PG_PIN_STAT_SHARDS;
    return shard;
}
