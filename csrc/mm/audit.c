/*
 * mm/audit.c - the reference-count audit (DESIGN invariant 1) in one call.
 *
 * The fuzz harness checks that every frame's refcount equals what its
 * owners hold and every page's mapcount the page-table leaves that map it.
 * The owners the core can see itself are the page-table leaves of the
 * address spaces it is given; the others (page cache, GUP holds, device
 * memory) are Python's records and come in as (pfn, kind) pairs.  The rules
 * are the harness's Python audit (pygup/tools/fuzz/world.py,
 * World.check_refcounts_reference), which stays as this call's twin:
 *
 *   - a live leaf (present or PROT_NONE, not special) is one mapping: a PTE
 *     maps its page, a PMD leaf its whole folio once (counted on the head);
 *     either holds one reference on the folio (a PTE-mapped page of a THP:
 *     on the THP's head), as the kernel's folio_add_*_rmap + folio_get do;
 *   - a GET hold is one reference on the folio, a PIN hold
 *     GUP_PIN_COUNTING_BIAS on a small folio and one on a large one (whose
 *     pins are counted in its pincount), as try_grab_folio() takes them;
 *     neither counts on the zero page;
 *   - every head frame that is not the zero page is compared; every frame's
 *     mapcount but the zero page's;
 *   - the pages the PIN holds hold, the zero page's left out, are counted
 *     for the pin-accounting check (nr_foll_pin_acquired - released).
 *
 * Nothing changes: the frames are read as pg_frames_snapshot() reads them.
 */
#include <string.h>

#include "internal.h"
#include "kernel/sched.h"
#include "mm/pgtable.h"

struct audit_walk {
    pg_machine *m;
    int64_t *ref, *map; /* expected, per frame */
    int64_t leaves;     /* PTE-sized pages of the leaves visited */
    uint64_t bad_pfn;   /* a live leaf past the last frame */
    bool bad;
};

static int audit_leaf_cb(pg_machine *m, void *ctx, struct pg_table *t,
                         _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct audit_walk *w = ctx;
    (void)t;
    uint64_t e = pg_load_acquire(slot);
    bool live = (e & (PG_PTE_PRESENT | PG_PTE_PROTNONE)) && !(e & PG_PTE_SPECIAL);
    bool huge = (e & PG_PTE_HUGE) != 0;
    struct pg_leaf_span span = pg_leaf_clip(addr, level, 0, PG_TASK_SIZE_MAX);
    for (uint64_t i = span.lo; i < span.hi; i++) {
        uint64_t a = addr + (i << PG_PAGE_SHIFT);
        w->leaves++;
        if (!live)
            continue;
        /* a huge leaf is one mapping of its folio: its first page counts */
        if (huge && (a & (PG_PMD_SIZE - 1)))
            continue;
        uint64_t pfn = pg_pte_pfn(e) + i;
        uint64_t head = huge ? pfn & ~(uint64_t)(PG_PMD_NR - 1) : pfn;
        if (head >= m->nr_frames) {
            if (!w->bad)
                w->bad_pfn = head;
            w->bad = true;
            continue;
        }
        w->map[head]++;
        /* a PTE-mapped page of a THP: the reference is its folio's (large
         * folios are PG_PMD_NR-aligned blocks of frames) */
        bool tail = pg_load_relaxed(&m->frames[pfn].flags) & PG_F_TAIL;
        w->ref[tail ? pfn & ~(uint64_t)(PG_PMD_NR - 1) : head]++;
    }
    return 0;
}

static void report_first(struct pg_audit_report *out, int kind, uint64_t pfn,
                         int64_t actual, int64_t expected)
{
    if (out->differ++ == 0) {
        out->kind = kind;
        out->pfn = pfn;
        out->actual = actual;
        out->expected = expected;
    }
}

int pg_audit_refcounts(pg_machine *m, const uint64_t *mms, int64_t nr_mms,
                       int64_t *leaves, const uint64_t *pfns, const uint8_t *kinds,
                       int64_t nr, int64_t *scratch, int64_t scratch_len,
                       struct pg_audit_report *out)
{
    /* every argument before any work */
    uint64_t n = m->nr_frames;
    if (!out || nr_mms < 0 || nr_mms > PG_MM_MAX || nr < 0 ||
        (nr_mms > 0 && (!mms || !leaves)) || (nr > 0 && (!pfns || !kinds)) ||
        !scratch || scratch_len < 0 || (uint64_t)scratch_len < 2 * n)
        return -PG_EINVAL;
    for (int64_t i = 0; i < nr; i++)
        if (pfns[i] >= m->nr_frames || kinds[i] > PG_AUDIT_HOLD_PIN)
            return -PG_EINVAL;
    for (int64_t i = 0; i < nr_mms; i++)
        if (!pg_mm_get(m, mms[i]))
            return -PG_EINVAL;
    /* the caller's buffer, reused from call to call: a fresh allocation
     * this size costs a page fault per 4 KiB on its first read, several
     * times what the audit itself costs.  It comes in zeroed and goes out
     * zeroed: the pass over the frames clears what it read, so no call
     * pays for clearing all of it (a memset of 2 x 8 bytes a frame was a
     * fifth of the audit) */
    int64_t *ref = scratch, *map = scratch + n;
    int64_t pinned = 0;
    *out = (struct pg_audit_report){.kind = PG_AUDIT_OK};

    for (int64_t i = 0; i < nr; i++) {
        uint64_t pfn = pfns[i];
        if (kinds[i] == PG_AUDIT_REF) {
            ref[pfn]++;
            continue;
        }
        uint64_t head = pg_frame_head(m, pfn);
        uint32_t flags = pg_load_relaxed(&m->frames[pfn].flags) |
                         pg_load_relaxed(&m->frames[head].flags);
        if (flags & PG_F_ZERO)
            continue;
        bool small = pg_load_relaxed(&m->frames[head].order) == 0;
        ref[head] += kinds[i] == PG_AUDIT_HOLD_PIN && small ? PG_GUP_PIN_COUNTING_BIAS : 1;
        pinned += kinds[i] == PG_AUDIT_HOLD_PIN;
    }

    struct audit_walk w = {.m = m, .ref = ref, .map = map};
    int rc = 0;
    for (int64_t i = 0; i < nr_mms && rc == 0; i++) {
        struct pg_mm *mm = pg_mm_lock(m, mms[i]);
        if (!mm) {
            rc = -PG_EINVAL; /* it went away since the check above */
            break;
        }
        w.leaves = 0;
        int64_t wr = pg_walk_range(m, mm, 0, PG_TASK_SIZE_MAX, audit_leaf_cb, &w);
        pg_spin_unlock(&mm->lock);
        if (wr < 0)
            rc = (int)wr;
        leaves[i] = w.leaves;
    }
    if (rc != 0 || w.bad) {
        /* no pass over the frames: clear what the owners and leaves wrote */
        memset(scratch, 0, 2 * n * sizeof(*scratch));
        if (rc == 0) {
            out->kind = PG_AUDIT_LEAF_PFN;
            out->pfn = w.bad_pfn;
            out->differ = 1;
        }
    } else {
        /* one pass over the frames; the failures reported in the Python
         * audit's order: a head's refcount, a negative refcount anywhere,
         * a page's mapcount */
        struct pg_audit_report neg = {.kind = PG_AUDIT_OK}, mapc = neg;
        for (uint64_t pfn = 0; pfn < n; pfn++) {
            struct pg_frame *f = &m->frames[pfn];
            uint32_t flags = pg_load_relaxed(&f->flags);
            int64_t actual = pg_load_relaxed(&f->refcount);
            int64_t mapped = pg_load_relaxed(&f->mapcount);
            int64_t want_ref = ref[pfn], want_map = map[pfn];
            if (want_ref | want_map) /* most frames have no owner: no store */
                ref[pfn] = map[pfn] = 0;
            /* the three checks without a branch each; the reports (and
             * their structs, kept out of the loop's registers) only for a
             * frame that fails one */
            bool bad_ref = !(flags & (PG_F_ZERO | PG_F_TAIL)) & (actual != want_ref);
            bool bad_map = !(flags & PG_F_ZERO) & (mapped != want_map);
            if (__builtin_expect(bad_ref | (actual < 0) | bad_map, 0)) {
                if (bad_ref)
                    report_first(out, PG_AUDIT_REFCOUNT, pfn, actual, want_ref);
                if (actual < 0 && !neg.differ)
                    report_first(&neg, PG_AUDIT_NEGATIVE, pfn, actual, 0);
                if (bad_map && !mapc.differ)
                    report_first(&mapc, PG_AUDIT_MAPCOUNT, pfn, mapped, want_map);
            }
        }
        if (!out->differ)
            *out = neg.differ ? neg : mapc;
    }
    out->pinned = pinned;
    return rc;
}

/* ---- the TLB audit ------------------------------------------------------
 * Between operations no CPU may cache a translation the page tables no
 * longer give (DESIGN invariant 5): every flush an operation owes was
 * made before it returned.  An entry is coherent when its mm exists and
 * the leaf at its address is present and user-accessible and maps its
 * pfn, and, when the entry would serve a write without a walk (writable
 * and dirty: pg_user_access()'s hit rule), the leaf is writable and dirty
 * too.  A cached entry with fewer rights than the leaf is fine: the next
 * access that needs more walks again (a spurious fault, in the kernel).
 * Each CPU's entries are copied under its lock, then checked against the
 * tables; the caller holds the machine lock, so no table changes under it. */
int64_t pg_audit_tlbs(pg_machine *m, struct pg_tlb_report *out, int64_t max)
{
    if (max < 0 || (max > 0 && !out))
        return -PG_EINVAL;
    int64_t bad = 0;
    for (int cpu = 0; cpu < m->nr_cpus; cpu++) {
        struct pg_cpu *c = &m->cpus[cpu];
        struct pg_tlb_entry copy[PG_TLB_ENTRIES];
        pg_spin_lock(&c->lock);
        memcpy(copy, c->tlb, sizeof copy);
        pg_spin_unlock(&c->lock);
        for (int i = 0; i < PG_TLB_ENTRIES; i++) {
            const struct pg_tlb_entry *te = &copy[i];
            if (!te->mm_plus1)
                continue;
            uint64_t mmid = te->mm_plus1 - 1, addr = te->vpn << PG_PAGE_SHIFT, e = 0;
            struct pg_mm *mm = addr < PG_VA_LIMIT ? pg_mm_get(m, mmid) : NULL;
            int level = mm ? pg_walk_lockless(m, -1, mm, addr, &e, NULL) : 0;
            uint64_t pfn = pg_pte_pfn(e);
            if (level == PG_LEVEL_PMD)
                pfn += te->vpn & (PG_PMD_NR - 1);
            bool read_ok = level > 0 && (e & PG_PTE_PRESENT) && (e & PG_PTE_USER) &&
                           pfn == te->pfn;
            bool write_ok = !(te->writable && te->dirty) ||
                            ((e & PG_PTE_WRITE) && (e & PG_PTE_DIRTY));
            if (read_ok && write_ok)
                continue;
            if (bad < max)
                out[bad] = (struct pg_tlb_report){.cpu = cpu, .mm = mmid, .addr = addr,
                                                  .pfn = te->pfn, .leaf = e,
                                                  .writable = te->writable, .dirty = te->dirty};
            bad++;
        }
    }
    return bad;
}

/* ---- the oracles' reads in bulk -----------------------------------------
 * The harness's per-step checks read a few fields of many frames (the held
 * pages, the leaves of a range); one call for all of them, each field as
 * pg_frame_info() reports it: the folio's head, the page's flags with its
 * head's folio-wide ones, the head's mapping and order, in four rows of nr
 * entries.  Every pfn is checked before any output is written; nothing
 * changes. */
int pg_audit_frames(pg_machine *m, const uint64_t *pfns, int64_t nr, uint64_t *out)
{
    if (nr < 0 || (nr > 0 && (!pfns || !out)))
        return -PG_EINVAL;
    for (int64_t i = 0; i < nr; i++)
        if (pfns[i] >= m->nr_frames)
            return -PG_EINVAL;
    uint64_t *heads = out, *flags = out + nr, *mappings = out + 2 * nr, *orders = out + 3 * nr;
    for (int64_t i = 0; i < nr; i++) {
        uint64_t pfn = pfns[i], head = pg_frame_head(m, pfn);
        uint32_t hf = pg_load_acquire(&m->frames[head].flags);
        heads[i] = head;
        flags[i] = pg_load_acquire(&m->frames[pfn].flags) | (hf & ~PG_F_PER_PAGE);
        mappings[i] = pg_load_acquire(&m->frames[head].mapping);
        orders[i] = pg_load_relaxed(&m->frames[head].order);
    }
    return 0;
}

/* One of the counters the oracles compare after every step, without the
 * whole of pg_stats_get(): the free frames of a zone, or the FOLL_PIN pages
 * alive (nr_foll_pin_acquired - nr_foll_pin_released over every shard; a
 * negative count is a finding, hence the value through *out). */
int pg_audit_counter(pg_machine *m, int32_t which, int64_t *out)
{
    if (!out)
        return -PG_EINVAL;
    switch (which) {
    case PG_AUDIT_NR_FREE_NORMAL:
        *out = (int64_t)pg_load_relaxed(&m->zones[PG_ZONE_NORMAL].nr_free);
        return 0;
    case PG_AUDIT_NR_FREE_MOVABLE:
        *out = (int64_t)pg_load_relaxed(&m->zones[PG_ZONE_MOVABLE].nr_free);
        return 0;
    case PG_AUDIT_PINS_ALIVE: {
        uint64_t acquired = 0, released = 0;
        for (int i = 0; i < PG_PIN_STAT_SHARDS; i++) {
            acquired += pg_load_relaxed(&m->pin_stats[i].acquired);
            released += pg_load_relaxed(&m->pin_stats[i].released);
        }
        *out = (int64_t)(acquired - released);
        return 0;
    }
    default:
        return -PG_EINVAL;
    }
}

/* ---- the COWs the harness learns of -------------------------------------
 * A private file mapping whose page is anonymous now was copied (a write,
 * an unshare of a read-only long-term pin, a FOLL_FORCE fault, a
 * populate): the harness notes what the copy must hold.  This lists the
 * pages of the given ranges of one mm whose leaf (a non-empty entry, not
 * special) maps a folio whose head is anonymous: the pages
 * pg_range_leaves() lists, filtered as the harness filtered them with
 * pg_frame_info(), in one walk. */
struct anon_leaves {
    uint64_t start, end;
    uint64_t *addrs;
    int64_t max, n;
    bool bad; /* a leaf past the last frame */
};

static int anon_leaves_cb(pg_machine *m, void *ctx, struct pg_table *t,
                          _Atomic uint64_t *slot, uint64_t addr, int level)
{
    struct anon_leaves *l = ctx;
    (void)t;
    uint64_t e = pg_load_acquire(slot);
    if (e & PG_PTE_SPECIAL)
        return 0;
    struct pg_leaf_span span = pg_leaf_clip(addr, level, l->start, l->end);
    for (uint64_t i = span.lo; i < span.hi; i++) {
        uint64_t a = addr + (i << PG_PAGE_SHIFT);
        uint64_t pfn = pg_pte_pfn(e) + i;
        if (pfn >= m->nr_frames) {
            l->bad = true;
            return 1;
        }
        uint64_t head = pg_frame_head(m, pfn);
        if ((pg_load_acquire(&m->frames[head].mapping) & PG_MAPPING_FLAGS) != PG_MAPPING_ANON)
            continue;
        if (l->n < l->max) /* past max: counted, not written */
            l->addrs[l->n] = a;
        l->n++;
    }
    return 0;
}

int64_t pg_audit_anon_leaves(pg_machine *m, uint64_t mmid, const uint64_t *ranges,
                             int64_t nr_ranges, uint64_t *addrs, int64_t max,
                             int64_t *counts)
{
    /* every argument before any work */
    if (nr_ranges < 0 || (nr_ranges > 0 && (!ranges || !counts)) || max < 0 ||
        (max > 0 && !addrs))
        return -PG_EINVAL;
    for (int64_t i = 0; i < nr_ranges; i++) {
        int rc = pg_check_range(ranges[2 * i], ranges[2 * i + 1]);
        if (rc < 0)
            return rc;
    }
    struct pg_mm *mm = pg_mm_lock(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    struct anon_leaves l = {.addrs = addrs, .max = max};
    int64_t rc = 0;
    for (int64_t i = 0; i < nr_ranges; i++) {
        int64_t before = l.n; /* counts[i]: written or not */
        l.start = ranges[2 * i];
        l.end = ranges[2 * i + 1];
        if (rc >= 0 && !l.bad && l.start < l.end)
            rc = pg_walk_range(m, mm, l.start, l.end, anon_leaves_cb, &l);
        counts[i] = l.n - before;
    }
    pg_spin_unlock(&mm->lock);
    if (rc < 0)
        return rc;
    return l.bad ? -PG_EFAULT : l.n;
}
