/*
 * machine.c - the top of the core: the machine as a whole, created and torn
 * down here (each layer initialises its own part), its statistics and its
 * protection switches.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lib/report.h"
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

pg_machine *pg_machine_new(uint64_t nr_frames, uint64_t nr_movable,
                           int nr_cpus, int table_free_mode)
{
    /* the normal zone needs at least one block: it holds the zero page;
     * pfns must fit the frame's 32-bit head field */
    if (nr_frames == 0 || nr_frames % PG_PMD_NR || nr_movable % PG_PMD_NR ||
        nr_movable >= nr_frames || nr_frames > ((uint64_t)1 << 31))
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
    pg_report_init(m);

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
    out->pins_acquired = out->pins_released = 0;
    for (int i = 0; i < PG_PIN_STAT_SHARDS; i++) {
        out->pins_acquired += pg_load_relaxed(&m->pin_stats[i].acquired);
        out->pins_released += pg_load_relaxed(&m->pin_stats[i].released);
    }
}

int64_t pg_set_mutants(pg_machine *m, uint32_t mutants)
{
    if (mutants & ~(uint32_t)PG_MUT_ALL)
        return -PG_EINVAL;
    return pg_xchg(&m->mutants, mutants);
}
