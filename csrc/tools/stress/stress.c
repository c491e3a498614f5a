/*
 * tools/stress/stress.c - native multi-threaded race drivers for the fuzz harness.
 *
 * pg_stress_run() builds a private world on the machine (one mm, ranges of
 * anonymous or file pages, each range in its own 1 GiB region so that its
 * page tables are its own), then runs real threads, thread k acting as
 * emulated CPU k:
 *
 *   pinners     pg_gup_fast() over a random piece of a random range with a
 *               random pin variant, verify what came back, hold, unpin;
 *   workers     per scenario: unmappers, collapsers, truncaters, writeback
 *               (mkclean + a user writer), forkers - each owns its ranges,
 *               so per-range state needs no lock.
 *
 * Each range publishes a state word (cycle << 2 | phase) that its owner
 * changes (seq_cst) before and after every mutation; a pinner that reads the
 * same word before and after its pg_gup_fast knows that nothing but A/D bit
 * updates touched the range meanwhile, so what it took must be exactly what
 * is mapped.  The races themselves are judged by protocols that cannot give
 * a false alarm:
 *
 *   stale reference (unmap, collapse): the owner clears the entries (PTEs,
 *     or the PMD entry of a full PTE table), issues a full barrier and
 *     reads every frame's refcount (R1), flushes the TLBs (which waits for
 *     every CPU walking with IRQs off) and reads them again (R2).  GUP-fast
 *     grabs, then re-checks the entries, so a grab that R1 missed must see
 *     the cleared entry and drop its reference before the walker enables
 *     IRQs, i.e. before the flush returns: R2 <= R1 always.  R2 > R1 is a
 *     reference taken on a page after it was unmapped.
 *   fork: after copy_range, the forker waits for every pinner to finish the
 *     pg_gup_fast call it was in (pins that overlapped the copy are dropped
 *     inside the call), then no page the child shares may be pinned; the
 *     pinners check that what they pinned stays PageAnonExclusive.
 *   writeback: the cleaner bumps a per-page epoch after each mkclean, under
 *     a per-page "folio lock" that the writer's fault handler
 *     (page_mkwrite + make the PTE writable) also takes; a write that lands
 *     without a fault in an epoch the writer never faulted in went through
 *     a stale TLB entry.
 *
 * At the end the driver checks that every frame's counts are what the page
 * tables and the page cache hold, tears its world down and checks that
 * frames, table pages, address_space records and pin statistics are back
 * where they started.  Use-after-free and the like are found by the core's
 * own checks (PG_BUG_ON): the result counts them, the ring keeps them.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "lib/report.h"
#include "kernel/race.h"
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"
#include "tools/stress/stress.h"

#define REGION_SHIFT 30 /* one range per 1 GiB: its own PMD and PTE tables */
#define MSGS_PER_CHECK 3
#define MAX_PIN_PAGES 64

#define PH_STABLE 0u
#define PH_CHANGING 1u
#define PH_TRUNCATED 2u /* file: mapping words cleared, pages still mapped */
#define STATE(cycle, ph) (((uint64_t)(cycle) << 2) | (ph))
#define PHASE(s) ((unsigned)((s) & 3))

#define PTE_ANON_RW                                                        \
    ((uint64_t)(PG_PTE_PRESENT | PG_PTE_WRITE | PG_PTE_USER | PG_PTE_ACCESSED | \
                PG_PTE_DIRTY))

enum { RK_ANON, RK_SHMEM, RK_FILE, RK_SECRET };
enum { T_PINNER, T_WORKER, T_WRITER };

static const char *const check_names[PG_STRESS_NR_CHECKS] = {
    "stale_ref", "pin_mismatch", "pin_lost", "whitelist", "secretmem",
    "fork_shared", "not_exclusive", "wb_bypass", "balance", "violation",
    "error", "?"};

static const uint32_t variant_flags[6] = {
    PG_FOLL_PIN,
    PG_FOLL_PIN | PG_FOLL_WRITE,
    PG_FOLL_PIN | PG_FOLL_LONGTERM,
    PG_FOLL_PIN | PG_FOLL_LONGTERM | PG_FOLL_WRITE,
    PG_FOLL_GET,
    PG_FOLL_GET | PG_FOLL_WRITE,
};

struct srange {
    uint64_t addr;
    int npages, kind, owner;
    _Atomic uint64_t state; /* cycle << 2 | phase, written by the owner */
    /* owner-private */
    uint64_t cycle;
    uint64_t *pfn; /* frame mapped at page i (collapse, huge: head + i) */
    uint64_t as_id;
    int huge;
    int64_t *r1;
    /* writeback: the folio lock, the clean epochs, the writer's faults */
    pg_spinlock *lock;
    _Atomic uint64_t *epoch;
    uint64_t *faulted; /* writer-private */
};

struct srun {
    pg_machine *m;
    struct pg_stress_params p;
    uint64_t mm;
    struct pg_mm *mmp;
    struct srange *ranges;
    int nr_ranges;
    uint64_t anon_word, child_anon_word;
    uint64_t t0;
    uint64_t viol_base;
    _Atomic int stop;
    _Atomic int viol_seen;
    _Atomic uint64_t fails[PG_STRESS_NR_CHECKS];
    _Atomic uint64_t first_ns[PG_STRESS_NR_CHECKS];
    _Atomic uint64_t first_iter[PG_STRESS_NR_CHECKS];
    _Atomic uint64_t calls_done[PG_MAX_CPUS]; /* pinners: pg_gup_fast returns */
    /* pinners: what each holds now (pfn, 0 = free slot), set after
     * pg_gup_fast returned and cleared before the unpin */
    _Atomic uint64_t held[PG_MAX_CPUS][MAX_PIN_PAGES];
    _Atomic int exited[PG_MAX_CPUS];
    pg_spinlock msg_lock;
    int msg_count[PG_STRESS_NR_CHECKS]; /* under msg_lock */
    struct pg_stress_result *r;         /* msgs, under msg_lock */
};

struct sthread {
    struct srun *run;
    int cpu, kind, index;
    uint64_t rng;
    uint64_t iter;
    uint64_t ops[PG_STRESS_NR_OPS];
    pthread_t tid;
    uint64_t out[MAX_PIN_PAGES];
    uint64_t seen[MAX_PIN_PAGES];
    uint64_t *scratch_addrs, *scratch_ptes; /* forkers */
};

/* ---- helpers -------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rnd(struct sthread *t, uint64_t n)
{
    return n ? splitmix(&t->rng) % n : 0;
}

static void spin(uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        __asm__ __volatile__("" ::: "memory");
}

static bool stopping(struct srun *run)
{
    return pg_load_relaxed(&run->stop) != 0;
}

static const char *kind_name(int kind)
{
    return kind == T_PINNER ? "pinner" : kind == T_WRITER ? "writer" : "worker";
}

/* record a failed check: counted always, the first few messages kept */
static void fail(struct sthread *t, int check, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(struct sthread *t, int check, const char *fmt, ...)
{
    struct srun *run = t->run;
    uint64_t prev = pg_fetch_add(&run->fails[check], 1);
    if (prev == 0) {
        uint64_t dt = now_ns() - run->t0;
        pg_store_relaxed(&run->first_iter[check], t->iter);
        pg_store_release(&run->first_ns[check], dt ? dt : 1);
    }
    if (prev < MSGS_PER_CHECK) {
        char msg[320];
        int n = snprintf(msg, sizeof(msg), "%s: %s %d (cpu %d) iter %llu: ",
                         check_names[check], kind_name(t->kind), t->index, t->cpu,
                         (unsigned long long)t->iter);
        if (n < 0)
            n = 0;
        if ((size_t)n < sizeof(msg)) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
            va_end(ap);
        }
        pg_spin_lock(&run->msg_lock);
        struct pg_stress_result *r = run->r;
        size_t len = strlen(msg);
        if (run->msg_count[check] < MSGS_PER_CHECK &&
            (size_t)r->msg_len + len + 2 <= sizeof(r->msgs)) {
            memcpy(r->msgs + r->msg_len, msg, len);
            r->msg_len += (int)len;
            r->msgs[r->msg_len++] = '\n';
            r->msgs[r->msg_len] = '\0';
            run->msg_count[check]++;
        }
        pg_spin_unlock(&run->msg_lock);
    }
    if (run->p.stop_on_failure)
        pg_store_release(&run->stop, 1);
}

/* core violations (use-after-free, negative counts...) show up as a moving
 * total; note when that first happens */
static void poll_violations(struct sthread *t)
{
    struct srun *run = t->run;
    if (pg_load_relaxed(&run->viol_seen))
        return;
    if (pg_violation_total(run->m) == run->viol_base)
        return;
    int expected = 0;
    if (pg_cas(&run->viol_seen, &expected, 1)) {
        uint64_t dt = now_ns() - run->t0;
        pg_store_relaxed(&run->first_iter[PG_STRESS_CHK_VIOLATION], t->iter);
        pg_store_release(&run->first_ns[PG_STRESS_CHK_VIOLATION], dt ? dt : 1);
        if (run->p.stop_on_failure)
            pg_store_release(&run->stop, 1);
    }
}

static int64_t folio_refcount(pg_machine *m, uint64_t pfn)
{
    return pg_load_seqcst(&m->frames[pg_frame_head(m, pfn)].refcount);
}

static uint64_t page_addr(const struct srange *rg, int i)
{
    return rg->addr + ((uint64_t)i << PG_PAGE_SHIFT);
}

static uint64_t as_word(uint64_t as_id)
{
    return as_id << 2;
}

/* a zero-order frame, normal zone first (LONGTERM pins refuse movable ones) */
static int64_t alloc_frame(pg_machine *m, int order)
{
    int64_t pfn = pg_folio_alloc(m, order, PG_ZONE_NORMAL);
    if (pfn < 0)
        pfn = pg_folio_alloc(m, order, PG_ZONE_MOVABLE);
    return pfn;
}

/* Map a fresh frame at page i of the range, as a fault would: the
 * allocation reference becomes the mapping's (anon) or the page cache's
 * (file, which then takes one more for the mapping). */
static int map_fresh_page(struct srun *run, struct srange *rg, int i)
{
    pg_machine *m = run->m;
    int64_t pfn = alloc_frame(m, 0);
    if (pfn < 0)
        return (int)pfn;
    uint64_t content = ((uint64_t)rg->owner << 48) ^ (rg->cycle << 16) ^ (uint64_t)i;
    pg_frame_write(m, (uint64_t)pfn, content | 1);
    if (rg->kind == RK_ANON) {
        pg_folio_set_mapping(m, (uint64_t)pfn, run->anon_word, (rg->addr >> PG_PAGE_SHIFT) + (uint64_t)i);
        pg_folio_flags_update(m, (uint64_t)pfn,
                              PG_F_ANON_EXCLUSIVE | PG_F_UPTODATE | PG_F_LRU, 0);
    } else {
        uint32_t fl = PG_F_UPTODATE;
        if (rg->kind != RK_SECRET)
            fl |= PG_F_LRU;
        if (rg->kind == RK_FILE)
            fl |= PG_F_DIRTY | PG_F_MKWRITE; /* written after a page_mkwrite */
        pg_folio_flags_update(m, (uint64_t)pfn, fl, 0);
        pg_folio_set_mapping(m, (uint64_t)pfn, as_word(rg->as_id), (uint64_t)i);
        pg_folio_try_get(m, (uint64_t)pfn, 1);
    }
    pg_mapcount_add_internal(m, (uint64_t)pfn, 1);
    int rc = pg_pte_set(m, run->mm, page_addr(rg, i),
                        ((uint64_t)pfn << PG_PAGE_SHIFT) | PTE_ANON_RW, PG_LEVEL_PTE);
    if (rc < 0) {
        pg_mapcount_add_internal(m, (uint64_t)pfn, -1);
        pg_folio_put_internal(m, (uint64_t)pfn, rg->kind == RK_ANON ? 1 : 2);
        return rc;
    }
    rg->pfn[i] = (uint64_t)pfn;
    return 0;
}

static int populate_range(struct srun *run, struct srange *rg, struct sthread *t)
{
    for (int i = 0; i < rg->npages; i++) {
        int rc = map_fresh_page(run, rg, i);
        if (rc < 0)
            return rc;
        if (t)
            t->ops[PG_STRESS_OP_PAGES_MAPPED]++;
    }
    return 0;
}

/* ---- pinners -------------------------------------------------------------- */

static void pinner_step(struct sthread *t)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    const struct pg_stress_params *p = &run->p;
    struct srange *rg = &run->ranges[rnd(t, (uint64_t)run->nr_ranges)];
    int off = (int)rnd(t, (uint64_t)rg->npages);
    int n = 1 + (int)rnd(t, (uint64_t)p->max_pin_pages);
    if (off + n > rg->npages)
        n = rg->npages - off;
    uint32_t v;
    do
        v = (uint32_t)rnd(t, 6);
    while (!(p->variants & (1u << v)));
    uint32_t flags = variant_flags[v];
    bool pin = (flags & PG_FOLL_PIN) != 0;
    uint64_t start = page_addr(rg, off);

    uint64_t s0 = pg_load_seqcst(&rg->state);
    int64_t got = pg_gup_fast(m, t->cpu, run->mm, start, n, flags, p->policy, t->out);
    bool publish = pin && p->scenario == PG_STRESS_FORK;
    for (int64_t i = 0; publish && i < got; i++)
        pg_store_release(&run->held[t->cpu][i], t->out[i]);
    pg_store_release(&run->calls_done[t->cpu], t->iter + 1);
    t->ops[PG_STRESS_OP_FAST_CALLS]++;
    if (got < 0) {
        fail(t, PG_STRESS_CHK_ERROR, "pg_gup_fast(%#llx, %d, %#x) = %lld",
             (unsigned long long)start, n, flags, (long long)got);
        return;
    }
    if (got == 0) {
        t->ops[PG_STRESS_OP_FAST_EMPTY]++;
        return;
    }
    t->ops[PG_STRESS_OP_PAGES_TAKEN] += (uint64_t)got;

    /* what is mapped there now: walked with IRQs off, as GUP-fast does */
    if (PHASE(s0) == PH_STABLE) {
        pg_local_irq_disable(m, t->cpu);
        for (int64_t i = 0; i < got; i++) {
            struct pg_walk w;
            uint64_t a = start + ((uint64_t)i << PG_PAGE_SHIFT);
            int level = pg_walk_lockless_ex(m, t->cpu, run->mmp, a, &w);
            uint64_t pfn = 0;
            if (level > 0 && pg_pte_maps_frame(w.pte)) {
                pfn = pg_pte_pfn(w.pte);
                if (level == PG_LEVEL_PMD)
                    pfn += (a >> PG_PAGE_SHIFT) & (PG_PMD_NR - 1);
            }
            t->seen[i] = pfn;
        }
        pg_local_irq_enable(m, t->cpu);
    }
    uint64_t s1 = pg_load_seqcst(&rg->state);
    if (s0 == s1 && PHASE(s0) == PH_STABLE) {
        for (int64_t i = 0; i < got; i++) {
            /* mkclean clears a PTE for a moment: only another frame counts */
            if (t->seen[i] != t->out[i] &&
                (t->seen[i] != 0 || p->scenario != PG_STRESS_WRITEBACK))
                fail(t, PG_STRESS_CHK_PIN_MISMATCH,
                     "%s of %#llx took pfn %llu but pfn %llu is mapped there "
                     "(no change to the range meanwhile)", pin ? "pin" : "get",
                     (unsigned long long)(start + ((uint64_t)i << PG_PAGE_SHIFT)),
                     (unsigned long long)t->out[i], (unsigned long long)t->seen[i]);
        }
        if (rg->kind == RK_SECRET)
            fail(t, PG_STRESS_CHK_SECRETMEM, "GUP-fast (%#x) returned %lld secretmem "
                 "page(s), first pfn %llu", flags, (long long)got,
                 (unsigned long long)t->out[0]);
    }
    const uint32_t lt_w = PG_FOLL_PIN | PG_FOLL_LONGTERM | PG_FOLL_WRITE;
    if ((flags & lt_w) == lt_w && (p->policy & PG_GUPF_WHITELIST) && s0 == s1) {
        if (PHASE(s0) == PH_STABLE && rg->kind == RK_FILE)
            fail(t, PG_STRESS_CHK_WHITELIST, "PIN|LONGTERM|WRITE fast pin of %lld "
                 "page(s) of a dirty-tracked (non-shmem) file, first pfn %llu",
                 (long long)got, (unsigned long long)t->out[0]);
        else if (PHASE(s0) == PH_TRUNCATED)
            fail(t, PG_STRESS_CHK_WHITELIST, "PIN|LONGTERM|WRITE fast pin of %lld "
                 "truncated page(s) (mapping NULL before the call), first pfn %llu",
                 (long long)got, (unsigned long long)t->out[0]);
    }

    spin(p->hold_spins);

    /* what we hold must still be counted in the folio */
    for (int64_t i = 0; i < got; i++) {
        uint64_t pfn = t->out[i], head = pg_frame_head(m, pfn);
        struct pg_frame *h = &m->frames[head];
        uint32_t fl = pg_load_acquire(&h->flags);
        int32_t ref = pg_load_acquire(&h->refcount);
        bool large = pg_load_relaxed(&h->order) > 0;
        bool ok = !(fl & PG_F_FREE) &&
                  (!pin ? ref >= 1
                        : large ? pg_load_acquire(&h->pincount) >= 1 && ref >= 1
                                : ref >= PG_GUP_PIN_COUNTING_BIAS);
        if (!ok)
            fail(t, PG_STRESS_CHK_PIN_LOST, "held %s on pfn %llu but its folio %llu has "
                 "refcount %d pincount %d flags %#x", pin ? "pin" : "ref",
                 (unsigned long long)pfn, (unsigned long long)head, ref,
                 pg_load_relaxed(&h->pincount), fl);
        if (pin && p->scenario == PG_STRESS_FORK &&
            !(pg_load_acquire(&m->frames[pfn].flags) & PG_F_ANON_EXCLUSIVE))
            fail(t, PG_STRESS_CHK_NOT_EXCLUSIVE, "pinned anon page %llu (%#x) is no longer "
                 "exclusive: a fork shared it while it was pinned",
                 (unsigned long long)pfn, flags);
    }
    for (int64_t i = 0; publish && i < got; i++)
        pg_store_release(&run->held[t->cpu][i], 0);
    int rc = pg_gup_put_pages(m, t->out, got, pin);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "releasing %lld page(s) from pfn %llu: %d",
             (long long)got, (unsigned long long)t->out[0], rc);
}

/* ---- unmappers ------------------------------------------------------------ */

/* R2 > R1 on any frame: a reference taken after the entry was cleared
 * outlived the flush */
static void check_stale(struct sthread *t, struct srange *rg, int n,
                        const uint64_t *pfns, const char *what)
{
    pg_machine *m = t->run->m;
    for (int i = 0; i < n; i++) {
        int64_t r2 = folio_refcount(m, pfns[i]);
        if (r2 > rg->r1[i])
            fail(t, PG_STRESS_CHK_STALE_REF, "pfn %llu at %#llx: refcount %lld right after "
                 "the %s was cleared, %lld after the flush: a GUP-fast reference was "
                 "taken on an unmapped page", (unsigned long long)pfns[i],
                 (unsigned long long)page_addr(rg, i), (long long)rg->r1[i], what,
                 (long long)r2);
    }
}

static void refill(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    rg->cycle++;
    int rc = populate_range(run, rg, t);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "refilling %#llx: %d", (unsigned long long)rg->addr, rc);
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_STABLE));
}

static void free_tables(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    uint64_t end = rg->addr + ((uint64_t)1 << REGION_SHIFT);
    int64_t n = pg_free_pgtables(run->m, t->cpu, run->mm, rg->addr, end);
    if (n < 0)
        fail(t, PG_STRESS_CHK_ERROR, "free_pgtables %#llx: %lld",
             (unsigned long long)rg->addr, (long long)n);
    else
        t->ops[PG_STRESS_OP_TABLES_FREED] += (uint64_t)n;
}

static void unmapper_step(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    uint64_t end = page_addr(rg, rg->npages);
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_CHANGING));
    if (rnd(t, 4) != 0) {
        /* munmap's mmu_gather, step by step so the driver can look between
         * the steps: clear every PTE, barrier, R1, flush, R2, release */
        for (int i = 0; i < rg->npages; i++) {
            uint64_t old = 0;
            int level = pg_pte_clear(m, run->mm, page_addr(rg, i), &old);
            if (level != PG_LEVEL_PTE || pg_pte_pfn(old) != rg->pfn[i])
                fail(t, PG_STRESS_CHK_ERROR, "clearing %#llx: level %d entry %#llx, "
                     "expected pfn %llu", (unsigned long long)page_addr(rg, i), level,
                     (unsigned long long)old, (unsigned long long)rg->pfn[i]);
            /* R1 right after each clear: a GUP-fast that read the PTE before
             * the clear and grabs after R1 is what a missing re-check lets
             * through; the closer R1 follows the clear, the more are seen */
            pg_smp_mb(); /* the clear before R1: pairs with the grab's barrier */
            rg->r1[i] = folio_refcount(m, rg->pfn[i]);
        }
        int rc = pg_flush_tlb_range(m, t->cpu, run->mm, rg->addr, end);
        if (rc < 0)
            fail(t, PG_STRESS_CHK_ERROR, "flush: %d", rc);
        check_stale(t, rg, rg->npages, rg->pfn, "PTE");
        for (int i = 0; i < rg->npages; i++) {
            pg_mapcount_add_internal(m, rg->pfn[i], -1);
            pg_folio_put_internal(m, rg->pfn[i], 1);
        }
    } else {
        int64_t n = pg_zap_range(m, t->cpu, run->mm, rg->addr, end);
        if (n != rg->npages)
            fail(t, PG_STRESS_CHK_ERROR, "zap %#llx: %lld", (unsigned long long)rg->addr,
                 (long long)n);
    }
    free_tables(t, rg);
    t->ops[PG_STRESS_OP_UNMAPS]++;
    refill(t, rg);
}

/* ---- collapsers ------------------------------------------------------------ */

/* khugepaged's collapse of a fully mapped PTE table into a huge PMD, with
 * the race window that matters to GUP-fast: the PMD entry is cleared while
 * the PTE table below it still maps every page.  Then the driver puts the
 * table back for bookkeeping (zap + free_pgtables account for the small
 * pages and the table) and installs the huge leaf. */
static void collapse(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    uint64_t addr = rg->addr, end = addr + PG_PMD_SIZE;
    int64_t huge = pg_folio_alloc(m, PG_PMD_ORDER, PG_ZONE_NORMAL);
    if (huge < 0) {
        t->ops[PG_STRESS_OP_BACKOFFS]++;
        return;
    }
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_CHANGING));
    struct pg_mm *mm = pg_mm_lock(m, run->mm);
    if (!mm) {
        fail(t, PG_STRESS_CHK_ERROR, "collapse: mm gone");
        pg_folio_put_internal(m, (uint64_t)huge, 1);
        return;
    }
    struct pg_table *pgd = pg_table_get(m, pg_load_relaxed(&mm->pgd));
    uint64_t e4 = pg_load_acquire(&pgd->e[(addr >> PG_PGD_SHIFT) & 511]);
    struct pg_table *pud = e4 ? pg_table_get(m, pg_pte_pfn(e4)) : NULL;
    uint64_t e3 = pud ? pg_load_acquire(&pud->e[(addr >> PG_PUD_SHIFT) & 511]) : 0;
    struct pg_table *pmdt = e3 ? pg_table_get(m, pg_pte_pfn(e3)) : NULL;
    _Atomic uint64_t *slot = pmdt ? &pmdt->e[(addr >> PG_PMD_SHIFT) & 511] : NULL;
    uint64_t old = slot ? pg_load_acquire(slot) : 0;
    if (!slot || !old || (old & PG_PTE_HUGE)) {
        pg_spin_unlock(&mm->lock);
        fail(t, PG_STRESS_CHK_ERROR, "collapse %#llx: no PTE table (pmd %#llx)",
             (unsigned long long)addr, (unsigned long long)old);
        pg_folio_put_internal(m, (uint64_t)huge, 1);
        return;
    }
    /* pmdp_collapse_flush: the PMD goes, the PTE table stays populated */
    pg_xchg(slot, 0);
    pmdt->nr_used--;
    pg_smp_mb();
    for (int i = 0; i < rg->npages; i++)
        rg->r1[i] = folio_refcount(m, rg->pfn[i]);
    pg_flush_tlb_mm_range(m, t->cpu, mm, run->mm, addr, end, false);
    check_stale(t, rg, rg->npages, rg->pfn, "PMD");
    pg_ipi_sync_internal(m, t->cpu); /* tlb_remove_table_sync_one */
    /* copy the data into the huge folio */
    for (int i = 0; i < rg->npages; i++) {
        pg_store_relaxed(&m->frames[huge + i].content,
                         pg_load_acquire(&m->frames[rg->pfn[i]].content));
        pg_fetch_or(&m->frames[huge + i].flags, PG_F_ANON_EXCLUSIVE);
    }
    pg_store_release(slot, old); /* bookkeeping: zap below releases it all */
    pmdt->nr_used++;
    pg_spin_unlock(&mm->lock);

    int64_t n = pg_zap_range(m, t->cpu, run->mm, addr, end);
    if (n != rg->npages)
        fail(t, PG_STRESS_CHK_ERROR, "collapse zap %#llx: %lld", (unsigned long long)addr,
             (long long)n);
    free_tables(t, rg);
    pg_folio_set_mapping(m, (uint64_t)huge, run->anon_word, addr >> PG_PAGE_SHIFT);
    pg_folio_flags_update(m, (uint64_t)huge, PG_F_UPTODATE | PG_F_LRU, 0);
    pg_mapcount_add_internal(m, (uint64_t)huge, 1);
    int rc = pg_pte_set(m, run->mm, addr, ((uint64_t)huge << PG_PAGE_SHIFT) | PTE_ANON_RW,
                        PG_LEVEL_PMD);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "installing the huge PMD at %#llx: %d",
             (unsigned long long)addr, rc);
    for (int i = 0; i < rg->npages; i++)
        rg->pfn[i] = (uint64_t)huge + (uint64_t)i;
    rg->huge = 1;
    rg->cycle++;
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_STABLE));
    t->ops[PG_STRESS_OP_COLLAPSES]++;
}

/* split back: zap the huge leaf, map small pages again */
static void split(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_CHANGING));
    int64_t n = pg_zap_range(run->m, t->cpu, run->mm, rg->addr, rg->addr + PG_PMD_SIZE);
    if (n != PG_PMD_NR)
        fail(t, PG_STRESS_CHK_ERROR, "split zap %#llx: %lld", (unsigned long long)rg->addr,
             (long long)n);
    rg->huge = 0;
    free_tables(t, rg);
    refill(t, rg);
}

static void collapser_step(struct sthread *t, struct srange *rg)
{
    if (rg->huge)
        split(t, rg);
    else
        collapse(t, rg);
}

/* ---- truncaters ------------------------------------------------------------ */

/* truncate + evict: the folios leave the page cache (mapping word cleared),
 * the inode's address_space is released (freed after a grace period), the
 * mappings are zapped, the page-cache references dropped; then a new file
 * is mapped there.  The record is released before the zap returns, as on
 * an architecture whose TLB flush does not wait for IRQs-off walkers:
 * only RCU keeps GUP-fast's ->mapping read safe then. */
static void truncater_step(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_CHANGING));
    for (int i = 0; i < rg->npages; i++)
        pg_folio_set_mapping(m, rg->pfn[i], 0, 0);
    int rc = pg_as_release(m, rg->as_id);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "as_release(%llu): %d", (unsigned long long)rg->as_id,
             rc);
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_TRUNCATED));
    spin(run->p.dwell_spins);
    pg_store_seqcst(&rg->state, STATE(rg->cycle, PH_CHANGING));
    int64_t n = pg_zap_range(m, t->cpu, run->mm, rg->addr, page_addr(rg, rg->npages));
    if (n != rg->npages)
        fail(t, PG_STRESS_CHK_ERROR, "truncate zap %#llx: %lld",
             (unsigned long long)rg->addr, (long long)n);
    for (int i = 0; i < rg->npages; i++)
        pg_folio_put_internal(m, rg->pfn[i], 1); /* the page cache's reference */
    free_tables(t, rg);
    uint32_t kind = rg->kind == RK_SHMEM    ? PG_AS_SHMEM
                    : rg->kind == RK_SECRET ? PG_AS_SECRETMEM
                                            : PG_AS_DIRTY_TRACKED;
    int64_t id = pg_as_new(m, kind);
    if (id < 0) {
        fail(t, PG_STRESS_CHK_ERROR, "as_new: %lld", (long long)id);
        pg_store_release(&run->stop, 1);
        return;
    }
    rg->as_id = (uint64_t)id;
    t->ops[PG_STRESS_OP_TRUNCATES]++;
    refill(t, rg);
}

/* ---- writeback: cleaner and writer --------------------------------------- */

/* folio_clear_dirty_for_io(): under the folio lock, mkclean every mapping
 * (here: one), then clear dirty; the epoch says "clean since then" */
static void cleaner_step(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    int i = (int)rnd(t, (uint64_t)rg->npages);
    pg_spin_lock(&rg->lock[i]);
    int was_dirty = 0;
    int rc = pg_pte_mkclean(m, t->cpu, run->mm, page_addr(rg, i), rg->pfn[i], &was_dirty);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "mkclean %#llx: %d", (unsigned long long)page_addr(rg, i),
             rc);
    pg_folio_flags_update(m, rg->pfn[i], 0, PG_F_DIRTY | PG_F_MKWRITE);
    pg_fetch_add(&rg->epoch[i], 1);
    pg_spin_unlock(&rg->lock[i]);
    t->ops[PG_STRESS_OP_MKCLEANS]++;
}

static void writer_step(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    int i = (int)rnd(t, (uint64_t)rg->npages);
    uint64_t a = page_addr(rg, i);
    for (int tries = 0; tries < 4; tries++) {
        uint64_t e0 = pg_load_acquire(&rg->epoch[i]), out;
        int rc = pg_user_access(m, t->cpu, run->mm, a, 1, (t->iter << 8) | 1, &out);
        if (rc == PG_FAULT_NONE) {
            t->ops[PG_STRESS_OP_WRITES]++;
            if (rg->faulted[i] != e0)
                fail(t, PG_STRESS_CHK_WB_BYPASS, "write to %#llx (pfn %llu) landed after "
                     "mkclean #%llu returned, but the last write fault was in epoch %llu",
                     (unsigned long long)a, (unsigned long long)rg->pfn[i],
                     (unsigned long long)e0, (unsigned long long)rg->faulted[i]);
            return;
        }
        if (rc == PG_FAULT_NOT_PRESENT)
            continue; /* mkclean has the PTE cleared for a moment: retry */
        if (rc != PG_FAULT_WRITE_PROTECT) {
            fail(t, PG_STRESS_CHK_ERROR, "user write %#llx: %d", (unsigned long long)a, rc);
            return;
        }
        /* the write fault: page_mkwrite, then make the PTE writable */
        pg_spin_lock(&rg->lock[i]);
        pg_folio_flags_update(m, rg->pfn[i], PG_F_MKWRITE | PG_F_DIRTY, 0);
        uint64_t old;
        int level = pg_pte_modify(m, run->mm, a, (int64_t)rg->pfn[i], 0,
                                  PG_PTE_WRITE | PG_PTE_DIRTY | PG_PTE_ACCESSED, &old);
        rg->faulted[i] = pg_load_acquire(&rg->epoch[i]);
        pg_spin_unlock(&rg->lock[i]);
        t->ops[PG_STRESS_OP_WRITE_FAULTS]++;
        if (level < 0) {
            fail(t, PG_STRESS_CHK_ERROR, "write fault %#llx: %d", (unsigned long long)a, level);
            return;
        }
    }
}

/* ---- forkers ----------------------------------------------------------------- */

/* every pinner has returned from the pg_gup_fast call it was in (or left),
 * and so published what that call pinned */
static void wait_pinners(struct sthread *t, uint64_t *snap)
{
    struct srun *run = t->run;
    int np = run->p.nr_pinners;
    for (int c = 0; c < np; c++)
        snap[c] = pg_load_acquire(&run->calls_done[c]);
    for (int c = 0; c < np; c++) {
        unsigned spins = 0;
        while (pg_load_acquire(&run->calls_done[c]) == snap[c] &&
               !pg_load_acquire(&run->exited[c]) && !stopping(run))
            pg_cpu_relax(&spins);
    }
}

static void forker_step(struct sthread *t, struct srange *rg)
{
    struct srun *run = t->run;
    pg_machine *m = run->m;
    uint64_t end = page_addr(rg, rg->npages);
    int64_t child = pg_mm_new(m);
    if (child < 0) {
        fail(t, PG_STRESS_CHK_ERROR, "mm_new: %lld", (long long)child);
        return;
    }
    int64_t n = pg_copy_range(m, t->cpu, run->mm, (uint64_t)child, rg->addr, end, 1, 1,
                              run->child_anon_word);
    if (n != rg->npages)
        fail(t, PG_STRESS_CHK_ERROR, "copy_range %#llx: %lld", (unsigned long long)rg->addr,
             (long long)n);
    t->ops[PG_STRESS_OP_FORKS]++;
    uint64_t snap[PG_MAX_CPUS];
    wait_pinners(t, snap);
    int64_t nl = pg_range_leaves(m, (uint64_t)child, rg->addr, end, t->scratch_addrs,
                                 t->scratch_ptes, rg->npages);
    for (int64_t j = 0; j < nl; j++) {
        int i = (int)((t->scratch_addrs[j] - rg->addr) >> PG_PAGE_SHIFT);
        uint64_t pfn = pg_pte_pfn(t->scratch_ptes[j]);
        if (i < 0 || i >= rg->npages || pfn != rg->pfn[i])
            continue; /* copied for the child: fine */
        /* shared with the child: no pinner may hold it.  (The refcount
         * alone would not do: a GUP-fast that grabs and then backs off
         * because the page must be unshared holds a pin for a moment.) */
        for (int c = 0; c < run->p.nr_pinners; c++)
            for (int k = 0; k < MAX_PIN_PAGES; k++)
                if (pg_load_acquire(&run->held[c][k]) == pfn)
                    fail(t, PG_STRESS_CHK_FORK_SHARED, "page %llu at %#llx, pinned by "
                         "pinner %d, is shared with the fork's child (refcount %d)",
                         (unsigned long long)pfn, (unsigned long long)t->scratch_addrs[j], c,
                         pg_load_relaxed(&m->frames[pfn].refcount));
    }
    int rc = pg_mm_destroy(m, t->cpu, (uint64_t)child);
    if (rc < 0)
        fail(t, PG_STRESS_CHK_ERROR, "mm_destroy(child): %d", rc);
    /* the parent's next write fault would reuse every page it alone holds:
     * exclusive again, then writable (do_wp_page's reuse) */
    for (int i = 0; i < rg->npages; i++) {
        struct pg_frame *f = &m->frames[rg->pfn[i]];
        if ((pg_load_acquire(&f->flags) & PG_F_ANON_EXCLUSIVE) ||
            pg_load_acquire(&f->refcount) != 1 || pg_load_acquire(&f->mapcount) != 1)
            continue;
        pg_fetch_or(&f->flags, PG_F_ANON_EXCLUSIVE);
        pg_pte_modify(m, run->mm, page_addr(rg, i), (int64_t)rg->pfn[i], 0, PG_PTE_WRITE,
                      NULL);
    }
}

/* ---- threads ------------------------------------------------------------------ */

static void worker_step(struct sthread *t)
{
    struct srun *run = t->run;
    int per = run->p.ranges_per_worker;
    struct srange *rg = &run->ranges[t->index * per + (int)rnd(t, (uint64_t)per)];
    switch (run->p.scenario) {
    case PG_STRESS_UNMAP:
        unmapper_step(t, rg);
        break;
    case PG_STRESS_COLLAPSE:
        collapser_step(t, rg);
        break;
    case PG_STRESS_TRUNCATE:
        truncater_step(t, rg);
        break;
    case PG_STRESS_WRITEBACK:
        if (t->kind == T_WRITER)
            writer_step(t, rg);
        else
            cleaner_step(t, rg);
        break;
    case PG_STRESS_FORK:
        forker_step(t, rg);
        break;
    }
}

static void *thread_main(void *arg)
{
    struct sthread *t = arg;
    struct srun *run = t->run;
    uint64_t max = run->p.max_iters;
    /* the race amplifier (kernel/race.h): only pinners spin at the windows */
    pg_race_amplifier_thread(t->kind == T_PINNER ? run->p.window_spins : 0);
    while (!stopping(run) && (!max || t->iter < max)) {
        if (t->kind == T_PINNER)
            pinner_step(t);
        else
            worker_step(t);
        t->iter++;
        poll_violations(t);
    }
    pg_store_release(&run->exited[t->cpu], 1);
    return NULL;
}

/* ---- setup, checks at the end, teardown ---------------------------------------- */

int pg_stress_defaults(struct pg_stress_params *p, int scenario)
{
    if (!p || scenario < 0 || scenario >= PG_STRESS_NR_SCENARIOS)
        return -PG_EINVAL;
    memset(p, 0, sizeof(*p));
    p->scenario = scenario;
    p->nr_pinners = 2;
    p->nr_workers = 1;
    p->ranges_per_worker = scenario == PG_STRESS_TRUNCATE ? 3 : 2;
    p->range_pages = scenario == PG_STRESS_COLLAPSE ? PG_PMD_NR : 32;
    p->max_pin_pages = 8;
    p->variants = PG_STRESS_V_ALL;
    p->policy = PG_GUPF_WHITELIST;
    p->seed = 1;
    p->duration_ns = 1000000000ull;
    p->hold_spins = 200;
    p->dwell_spins = 2000;
    return 0;
}

int pg_stress_nr_threads(const struct pg_stress_params *p)
{
    if (!p)
        return -PG_EINVAL;
    return p->nr_pinners + p->nr_workers * (p->scenario == PG_STRESS_WRITEBACK ? 2 : 1);
}

static int check_params(pg_machine *m, const struct pg_stress_params *p)
{
    if (!m || !p || p->scenario < 0 || p->scenario >= PG_STRESS_NR_SCENARIOS ||
        p->nr_pinners < 0 || p->nr_workers < 1 || p->ranges_per_worker < 1 ||
        p->range_pages < 1 || p->range_pages > PG_PMD_NR || p->max_pin_pages < 1 ||
        p->max_pin_pages > MAX_PIN_PAGES || (p->nr_pinners && !(p->variants & PG_STRESS_V_ALL)) ||
        (p->variants & ~(uint32_t)PG_STRESS_V_ALL) ||
        (p->policy & ~(uint32_t)(PG_GUPF_WHITELIST | PG_GUPF_SECRETMEM_LRU |
                                     PG_GUPF_UNSHARE_COW)) ||
        (!p->duration_ns && !p->max_iters))
        return -PG_EINVAL;
    int nt = pg_stress_nr_threads(p);
    if (nt > m->nr_cpus || (int64_t)p->nr_workers * p->ranges_per_worker > 256)
        return -PG_EINVAL;
    return 0;
}

static int range_kind(const struct pg_stress_params *p, int j)
{
    switch (p->scenario) {
    case PG_STRESS_TRUNCATE: {
        static const int kinds[3] = {RK_SHMEM, RK_FILE, RK_SECRET};
        return kinds[j % 3];
    }
    case PG_STRESS_WRITEBACK:
        return RK_FILE;
    default:
        return RK_ANON;
    }
}

static void free_ranges(struct srun *run)
{
    for (int j = 0; j < run->nr_ranges; j++) {
        struct srange *rg = &run->ranges[j];
        free(rg->pfn);
        free(rg->r1);
        free(rg->lock);
        free((void *)rg->epoch);
        free(rg->faulted);
    }
    free(run->ranges);
}

static int setup(struct srun *run)
{
    pg_machine *m = run->m;
    const struct pg_stress_params *p = &run->p;
    int64_t mm = pg_mm_new(m);
    if (mm < 0)
        return (int)mm;
    run->mm = (uint64_t)mm;
    run->mmp = pg_mm_get(m, run->mm);
    /* anon_vma ids: any value with the ANON bit; two distinct ones */
    run->anon_word = ((uint64_t)0x5157 << 2) | PG_MAPPING_ANON;
    run->child_anon_word = ((uint64_t)0x5158 << 2) | PG_MAPPING_ANON;
    run->nr_ranges = p->nr_workers * p->ranges_per_worker;
    run->ranges = calloc((size_t)run->nr_ranges, sizeof(*run->ranges));
    if (!run->ranges)
        return -PG_ENOMEM;
    int npages = p->scenario == PG_STRESS_COLLAPSE ? PG_PMD_NR : p->range_pages;
    for (int j = 0; j < run->nr_ranges; j++) {
        struct srange *rg = &run->ranges[j];
        rg->addr = (uint64_t)(j + 1) << REGION_SHIFT;
        rg->npages = npages;
        rg->kind = range_kind(p, j);
        rg->owner = j / p->ranges_per_worker;
        rg->pfn = calloc((size_t)npages, sizeof(*rg->pfn));
        rg->r1 = calloc((size_t)npages, sizeof(*rg->r1));
        rg->lock = calloc((size_t)npages, sizeof(*rg->lock));
        rg->epoch = calloc((size_t)npages, sizeof(*rg->epoch));
        rg->faulted = calloc((size_t)npages, sizeof(*rg->faulted));
        if (!rg->pfn || !rg->r1 || !rg->lock || !rg->epoch || !rg->faulted)
            return -PG_ENOMEM;
        for (int i = 0; i < npages; i++) {
            pg_spin_init(&rg->lock[i]);
            atomic_init(&rg->epoch[i], 0);
        }
        atomic_init(&rg->state, STATE(0, PH_STABLE));
        if (rg->kind != RK_ANON) {
            uint32_t kind = rg->kind == RK_SHMEM    ? PG_AS_SHMEM
                            : rg->kind == RK_SECRET ? PG_AS_SECRETMEM
                                                    : PG_AS_DIRTY_TRACKED;
            int64_t id = pg_as_new(m, kind);
            if (id < 0)
                return (int)id;
            rg->as_id = (uint64_t)id;
        }
        int rc = populate_range(run, rg, NULL);
        if (rc < 0)
            return rc;
    }
    /* every pinner's and writer's CPU walks this mm: in its cpumask from the
     * start, so the first flush already waits for them */
    for (int c = 0; c < pg_stress_nr_threads(p); c++)
        pg_mm_cpumask_set(run->mmp, c);
    return 0;
}

/* every frame's counts are what the page tables (+ page cache) hold */
static void check_balance(struct srun *run, struct sthread *t)
{
    pg_machine *m = run->m;
    for (int j = 0; j < run->nr_ranges; j++) {
        struct srange *rg = &run->ranges[j];
        for (int i = 0; i < rg->npages; i++) {
            uint64_t pfn = rg->pfn[i], head = pg_frame_head(m, pfn);
            if (rg->huge && i > 0)
                break; /* one folio, checked on its head */
            struct pg_frame *h = &m->frames[head], *f = &m->frames[pfn];
            int32_t want_ref = rg->kind == RK_ANON ? 1 : 2;
            int32_t ref = pg_load_acquire(&h->refcount), pc = pg_load_acquire(&h->pincount);
            int32_t mc = pg_load_acquire(&f->mapcount);
            if (ref != want_ref || pc != 0 || mc != 1)
                fail(t, PG_STRESS_CHK_BALANCE, "end of run: pfn %llu at %#llx has refcount %d "
                     "pincount %d mapcount %d; the tables and cache hold refcount %d, "
                     "mapcount 1, no pins", (unsigned long long)pfn,
                     (unsigned long long)page_addr(rg, i), ref, pc, mc, want_ref);
        }
    }
}

static void teardown(struct srun *run, struct sthread *t)
{
    pg_machine *m = run->m;
    if (run->mmp) {
        int rc = pg_mm_destroy(m, 0, run->mm);
        if (rc < 0)
            fail(t, PG_STRESS_CHK_ERROR, "mm_destroy: %d", rc);
    }
    for (int j = 0; run->ranges && j < run->nr_ranges; j++) {
        struct srange *rg = &run->ranges[j];
        if (rg->kind == RK_ANON || !rg->as_id)
            continue;
        for (int i = 0; i < rg->npages; i++)
            if (rg->pfn[i])
                pg_folio_put_internal(m, rg->pfn[i], 1); /* page cache */
        pg_as_release(m, rg->as_id);
    }
    pg_rcu_barrier(m, 0);
    pg_rcu_barrier(m, 0);
}

struct baseline {
    uint64_t nr_free[2], tables, as_live, as_pending;
    int64_t pins;
};

static void take_baseline(pg_machine *m, struct baseline *b)
{
    struct pg_stats s;
    pg_stats_get(m, &s);
    b->nr_free[0] = s.nr_free[0];
    b->nr_free[1] = s.nr_free[1];
    b->tables = s.table_pages_live + s.table_pages_pending;
    b->as_live = s.as_live;
    b->as_pending = s.as_pending;
    b->pins = (int64_t)(s.pins_acquired - s.pins_released);
}

int pg_stress_run(pg_machine *m, const struct pg_stress_params *p,
                  struct pg_stress_result *r)
{
    if (!r)
        return -PG_EINVAL;
    int rc = check_params(m, p);
    if (rc < 0)
        return rc;
    memset(r, 0, sizeof(*r));
    struct srun *run = calloc(1, sizeof(*run));
    int nt = pg_stress_nr_threads(p);
    struct sthread *th = calloc((size_t)nt + 1, sizeof(*th));
    if (!run || !th) {
        free(run);
        free(th);
        return -PG_ENOMEM;
    }
    run->m = m;
    run->p = *p;
    run->r = r;
    pg_spin_init(&run->msg_lock);
    struct sthread *main_t = &th[nt]; /* the main thread, for messages */
    main_t->run = run;
    main_t->kind = T_WORKER;
    main_t->index = -1;

    pg_rcu_barrier(m, 0);
    struct baseline before;
    take_baseline(m, &before);
    run->viol_base = pg_violation_total(m);
    rc = setup(run);
    if (rc < 0)
        goto out_teardown;

    int maxpages = run->ranges[0].npages;
    for (int k = 0; k < nt; k++) {
        struct sthread *t = &th[k];
        t->run = run;
        t->cpu = k;
        if (k < p->nr_pinners) {
            t->kind = T_PINNER;
            t->index = k;
        } else if (p->scenario == PG_STRESS_WRITEBACK && k >= p->nr_pinners + p->nr_workers) {
            t->kind = T_WRITER;
            t->index = k - p->nr_pinners - p->nr_workers;
        } else {
            t->kind = T_WORKER;
            t->index = k - p->nr_pinners;
        }
        t->rng = p->seed * 0x100000001b3ull + (uint64_t)k * 0x9e3779b97f4a7c15ull + 1;
        if (p->scenario == PG_STRESS_FORK && t->kind == T_WORKER) {
            t->scratch_addrs = calloc((size_t)maxpages, sizeof(uint64_t));
            t->scratch_ptes = calloc((size_t)maxpages, sizeof(uint64_t));
            if (!t->scratch_addrs || !t->scratch_ptes) {
                rc = -PG_ENOMEM;
                goto out_free_scratch;
            }
        }
    }

    if (p->window_spins)
        pg_race_amplifier_set(m, true);
    run->t0 = now_ns();
    int started = 0;
    for (; started < nt; started++) {
        if (pthread_create(&th[started].tid, NULL, thread_main, &th[started]) != 0) {
            rc = -PG_EAGAIN;
            pg_store_release(&run->stop, 1);
            break;
        }
    }
    uint64_t deadline = p->duration_ns ? run->t0 + p->duration_ns : UINT64_MAX;
    for (;;) {
        int exited = 0;
        for (int k = 0; k < started; k++)
            exited += pg_load_acquire(&run->exited[k]);
        if (exited == started || stopping(run) || now_ns() >= deadline)
            break;
        struct timespec ts = {0, 1000000}; /* 1 ms */
        nanosleep(&ts, NULL);
    }
    pg_store_release(&run->stop, 1);
    for (int k = 0; k < started; k++)
        pthread_join(th[k].tid, NULL);
    r->elapsed_ns = now_ns() - run->t0;
    r->nr_threads = started;
    pg_race_amplifier_set(m, false);
    for (int k = 0; k < started; k++) {
        for (int o = 0; o < PG_STRESS_NR_OPS; o++)
            r->ops[o] += th[k].ops[o];
        if (th[k].kind == T_PINNER)
            r->iters_pinners += th[k].iter;
        else
            r->iters_workers += th[k].iter;
    }
    if (rc == 0)
        check_balance(run, main_t);

out_free_scratch:
    for (int k = 0; k < nt; k++) {
        free(th[k].scratch_addrs);
        free(th[k].scratch_ptes);
    }
out_teardown:
    teardown(run, main_t);
    if (rc == 0) {
        struct baseline after;
        take_baseline(m, &after);
        if (memcmp(after.nr_free, before.nr_free, sizeof(before.nr_free)) ||
            after.tables != before.tables || after.as_live != before.as_live ||
            after.as_pending != before.as_pending || after.pins != before.pins)
            fail(main_t, PG_STRESS_CHK_BALANCE,
                 "after teardown: free frames %llu+%llu (before %llu+%llu), table pages "
                 "%llu (%llu), address_spaces %llu+%llu (%llu+%llu), pins outstanding "
                 "%lld (%lld)", (unsigned long long)after.nr_free[0],
                 (unsigned long long)after.nr_free[1], (unsigned long long)before.nr_free[0],
                 (unsigned long long)before.nr_free[1], (unsigned long long)after.tables,
                 (unsigned long long)before.tables, (unsigned long long)after.as_live,
                 (unsigned long long)after.as_pending, (unsigned long long)before.as_live,
                 (unsigned long long)before.as_pending, (long long)after.pins,
                 (long long)before.pins);
        uint64_t viol = pg_violation_total(m) - run->viol_base;
        pg_store_relaxed(&run->fails[PG_STRESS_CHK_VIOLATION], viol);
        if (viol && !pg_load_relaxed(&run->first_ns[PG_STRESS_CHK_VIOLATION]))
            pg_store_relaxed(&run->first_ns[PG_STRESS_CHK_VIOLATION], r->elapsed_ns);
    }
    for (int c = 0; c < PG_STRESS_NR_CHECKS; c++) {
        r->fails[c] = pg_load_relaxed(&run->fails[c]);
        r->first_fail_ns[c] = pg_load_relaxed(&run->first_ns[c]);
        r->first_fail_iter[c] = pg_load_relaxed(&run->first_iter[c]);
    }
    if (run->ranges)
        free_ranges(run);
    free(th);
    free(run);
    return rc;
}
