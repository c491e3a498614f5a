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

/* ---- the schedule explorer's view of the machine ---------------------
 * kernel/sched.c calls these through m->sched_digest / m->sched_observe:
 * it sits below mm/ and may not look at frames or tables itself. */

/* FNV-1a over 64-bit words: deterministic, cheap, good enough to tell
 * states apart (a collision only prunes one branch of the explorer) */
static inline uint64_t mix(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        h = (h ^ (v & 0xff)) * 0x100000001b3ULL;
    return h;
}

/* The explorer's state hash: everything in the C core a later step can
 * read -- frames in use (counts, flags, mapping word, content), live table
 * pages' entries, freed-but-pending tables and address_space records, each
 * CPU's IRQ / RCU nesting, pending IPIs and TLB, each live mm's
 * write_protect_seq and CPU mask.  Monotonic statistics are left out: they
 * differ between orders that reach the same state.  Called by the CPU that
 * gives the turn away, under s->lock: every other CPU is parked, so the
 * relaxed reads see a quiescent machine.  (Not included, and so the
 * explorer's caveat: the parked CPUs' C locals and the Python model.) */
static uint64_t explore_digest(pg_machine *m)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (uint64_t pfn = 0; pfn < m->nr_frames; pfn++) {
        struct pg_frame *f = &m->frames[pfn];
        uint32_t flags = pg_load_relaxed(&f->flags);
        int32_t ref = pg_load_relaxed(&f->refcount);
        if ((flags & PG_F_FREE) && ref == 0)
            continue;
        h = mix(h, pfn);
        h = mix(h, ((uint64_t)(uint32_t)ref << 32) | (uint32_t)pg_load_relaxed(&f->pincount));
        h = mix(h, ((uint64_t)(uint32_t)pg_load_relaxed(&f->mapcount) << 32) | flags);
        h = mix(h, pg_load_relaxed(&f->mapping));
        h = mix(h, pg_load_relaxed(&f->content));
        h = mix(h, pg_load_relaxed(&f->index));
    }
    for (int c = 0; c < PG_TABLE_MAX_CHUNKS; c++) {
        struct pg_table *chunk = pg_load_acquire(&m->table_chunks[c]);
        if (!chunk)
            break;
        for (int t = 0; t < PG_TABLE_CHUNK; t++) {
            struct pg_table *tb = &chunk[t];
            uint32_t magic = pg_load_relaxed(&tb->magic);
            if (magic != PG_TABLE_MAGIC_LIVE)
                continue;
            h = mix(h, ((uint64_t)tb->id << 8) | (uint64_t)pg_load_relaxed(&tb->level));
            for (int e = 0; e < PG_PTRS_PER_TABLE; e++) {
                uint64_t v = pg_load_relaxed(&tb->e[e]);
                if (v)
                    h = mix(mix(h, (uint64_t)e), v);
            }
        }
    }
    h = mix(h, pg_load_relaxed(&m->as_live));
    h = mix(h, pg_load_relaxed(&m->as_pending));
    h = mix(h, pg_load_relaxed(&m->table_pages_live));
    h = mix(h, pg_load_relaxed(&m->table_pages_pending));
    for (int c = 0; c < m->nr_cpus; c++) {
        struct pg_cpu *cpu = &m->cpus[c];
        h = mix(h, (uint64_t)(uint32_t)pg_load_relaxed(&cpu->irq_nesting));
        h = mix(h, ((uint64_t)(uint32_t)cpu->rcu_nesting << 1) |
                       (pg_load_relaxed(&cpu->rcu_seq) & 1));
        h = mix(h, cpu->pending != NULL);
        for (int e = 0; e < PG_TLB_ENTRIES; e++) {
            struct pg_tlb_entry *te = &cpu->tlb[e];
            if (!te->mm_plus1)
                continue;
            h = mix(mix(mix(h, te->mm_plus1), te->vpn), te->pfn);
            h = mix(h, ((uint64_t)te->writable << 8) | te->dirty);
        }
    }
    for (uint32_t i = 0; i < PG_MM_MAX && i < m->mm_next; i++) {
        struct pg_mm *mm = &m->mms[i];
        if (pg_load_relaxed(&mm->state) == PG_MM_FREE)
            continue;
        h = mix(h, ((uint64_t)i << 32) | pg_load_relaxed(&mm->wp_seq));
        h = mix(h, pg_load_relaxed(&mm->cpumask));
    }
    h = mix(h, m->rcu.count);
    return h ? h : 1;
}

/* The leaf that maps addr in mm, read quietly: no violation is recorded
 * for a dead table (the walk the race makes is the one that must see it);
 * 0 when nothing live maps it. */
static uint64_t peek_leaf(pg_machine *m, uint64_t mmid, uint64_t addr)
{
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return 0;
    struct pg_table *t = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    for (int l = PG_LEVEL_PGD; t && l >= PG_LEVEL_PTE; l--) {
        if (pg_load_relaxed(&t->magic) != PG_TABLE_MAGIC_LIVE)
            return 0;
        unsigned shift = PG_PAGE_SHIFT + 9u * (unsigned)(l - 1);
        uint64_t e = pg_load_acquire(&t->e[(addr >> shift) & (PG_PTRS_PER_TABLE - 1)]);
        if (!e || l == PG_LEVEL_PTE || (l == PG_LEVEL_PMD && (e & PG_PTE_HUGE)))
            return e;
        t = pg_table_get(m, pg_pte_pfn(e));
    }
    return 0;
}


/* the watched address's leaf and the folio behind it (or behind the last
 * leaf seen there, *last_pfn), for the step-by-step story */
static void explore_observe(pg_machine *m, uint64_t mmid, uint64_t addr, uint64_t *last_pfn,
                            struct pg_sched_watch *out)
{
    uint64_t e = peek_leaf(m, mmid, addr);
    if (pg_pte_maps_frame(e)) {
        uint64_t pfn = pg_pte_pfn(e);
        if (e & PG_PTE_HUGE)
            pfn += (addr >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
        *last_pfn = pfn;
    }
    out->pte = e;
    out->pfn = *last_pfn;
    if (*last_pfn < m->nr_frames) {
        struct pg_frame *f = &m->frames[*last_pfn];
        uint32_t head = pg_load_relaxed(&f->head);
        struct pg_frame *hf = head < m->nr_frames ? &m->frames[head] : f;
        out->ref = pg_load_relaxed(&hf->refcount);
        out->pin = pg_load_relaxed(&hf->pincount);
        out->map = pg_load_relaxed(&f->mapcount);
        out->mapping = pg_load_relaxed(&hf->mapping);
    }
}

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
    m->sched_digest = explore_digest;
    m->sched_observe = explore_observe;
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
    out->orphans_reaped = pg_load_relaxed(&m->orphans_reaped);
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
