/*
 * mm/frames.c - physical memory: the frame (folio) table, the two zones and
 * their allocator (orders 0 and 9), reference / pin / map counts, flags, the
 * encoded mapping word, page content, and the address_space records that
 * mapping words point to.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "lib/fault_inject.h"
#include "lib/report.h"
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "mm/frames.h"

static inline bool pfn_ok(pg_machine *m, uint64_t pfn)
{
    return pfn < m->nr_frames;
}

/* ---- the allocator -------------------------------------------------------
 * Blocks of 512 frames are the only structure: an order-9 folio is a whole
 * block; order-0 frames are handed out from SPLIT blocks, each with its own
 * free list; a SPLIT block whose frames are all free again goes back to the
 * whole list, so order-9 allocation never loses to fragmentation that has
 * been undone.  Everything under the zone lock. */

static void list_add(pg_machine *m, int32_t *headp, uint32_t b)
{
    struct pg_block *blk = &m->blocks[b];
    blk->prev = -1;
    blk->next = *headp;
    if (*headp >= 0)
        m->blocks[*headp].prev = (int32_t)b;
    *headp = (int32_t)b;
}

static void list_del(pg_machine *m, int32_t *headp, uint32_t b)
{
    struct pg_block *blk = &m->blocks[b];
    if (blk->prev >= 0)
        m->blocks[blk->prev].next = blk->next;
    else
        *headp = blk->next;
    if (blk->next >= 0)
        m->blocks[blk->next].prev = blk->prev;
    blk->prev = blk->next = -1;
}

static void frame_set_free(pg_machine *m, uint64_t pfn)
{
    struct pg_frame *f = &m->frames[pfn];
    pg_store_relaxed(&f->head, (uint32_t)pfn);
    pg_store_relaxed(&f->order, 0);
    pg_store_release(&f->flags, (uint32_t)PG_F_FREE);
}

int pg_frames_init(pg_machine *m)
{
    uint64_t nr_blocks = m->nr_frames / PG_PMD_NR;
    m->frames = calloc(m->nr_frames, sizeof(struct pg_frame));
    m->blocks = calloc(nr_blocks, sizeof(struct pg_block));
    if (!m->frames || !m->blocks)
        return -PG_ENOMEM;

    uint32_t normal_blocks = (uint32_t)((m->nr_frames - m->nr_movable) / PG_PMD_NR);
    for (int z = 0; z < 2; z++) {
        struct pg_zone *zone = &m->zones[z];
        pg_spin_init(&zone->lock);
        zone->first_block = z == PG_ZONE_NORMAL ? 0 : normal_blocks;
        zone->end_block = z == PG_ZONE_NORMAL ? normal_blocks : (uint32_t)nr_blocks;
        zone->whole = zone->partial = -1;
        /* push in reverse so low blocks are handed out first */
        for (uint32_t b = zone->end_block; b-- > zone->first_block;) {
            m->blocks[b].state = PG_BLOCK_WHOLE;
            list_add(m, &zone->whole, b);
        }
        pg_store_relaxed(&zone->nr_free,
                         (uint64_t)(zone->end_block - zone->first_block) * PG_PMD_NR);
    }
    for (uint64_t pfn = 0; pfn < m->nr_frames; pfn++) {
        m->frames[pfn].zone =
            (uint8_t)(pfn / PG_PMD_NR < normal_blocks ? PG_ZONE_NORMAL : PG_ZONE_MOVABLE);
        m->frames[pfn].free_next = PG_NIL;
        frame_set_free(m, pfn);
    }

    /* The zero page: split block 0 and take frame 0 for good. */
    struct pg_zone *nz = &m->zones[PG_ZONE_NORMAL];
    struct pg_block *b0 = &m->blocks[0];
    list_del(m, &nz->whole, 0);
    b0->state = PG_BLOCK_SPLIT;
    b0->free_head = PG_NIL;
    for (uint32_t pfn = PG_PMD_NR; pfn-- > 1;) {
        m->frames[pfn].free_next = b0->free_head;
        b0->free_head = pfn;
    }
    b0->nr_free = PG_PMD_NR - 1;
    list_add(m, &nz->partial, 0);
    b0->on_partial = 1;
    pg_store_relaxed(&nz->nr_free, pg_load_relaxed(&nz->nr_free) - 1);

    struct pg_frame *z = &m->frames[PG_ZERO_PFN];
    pg_store_relaxed(&z->head, PG_ZERO_PFN);
    pg_store_relaxed(&z->refcount, 1);
    pg_store_release(&z->flags, (uint32_t)(PG_F_HEAD | PG_F_ZERO));

    pg_spin_init(&m->as_lock);
    m->as_free = PG_NIL;
    return 0;
}

void pg_frames_fini(pg_machine *m)
{
    free(m->frames);
    free(m->blocks);
    m->frames = NULL;
    m->blocks = NULL;
}

/* take one frame from a zone; returns pfn or -ENOMEM */
static int64_t zone_alloc_small(pg_machine *m, struct pg_zone *zone)
{
    uint32_t b;
    if (zone->partial >= 0) {
        b = (uint32_t)zone->partial;
    } else if (zone->whole >= 0) {
        b = (uint32_t)zone->whole;
        list_del(m, &zone->whole, b);
        struct pg_block *blk = &m->blocks[b];
        blk->state = PG_BLOCK_SPLIT;
        blk->free_head = PG_NIL;
        uint32_t base = b * PG_PMD_NR;
        for (uint32_t i = PG_PMD_NR; i-- > 0;) {
            m->frames[base + i].free_next = blk->free_head;
            blk->free_head = base + i;
        }
        blk->nr_free = PG_PMD_NR;
        list_add(m, &zone->partial, b);
        blk->on_partial = 1;
    } else {
        return -PG_ENOMEM;
    }
    struct pg_block *blk = &m->blocks[b];
    uint32_t pfn = blk->free_head;
    blk->free_head = m->frames[pfn].free_next;
    m->frames[pfn].free_next = PG_NIL;
    if (--blk->nr_free == 0) {
        list_del(m, &zone->partial, b);
        blk->on_partial = 0;
    }
    return pfn;
}

static void zone_free_small(pg_machine *m, struct pg_zone *zone, uint32_t pfn)
{
    uint32_t b = pfn / PG_PMD_NR;
    struct pg_block *blk = &m->blocks[b];
    m->frames[pfn].free_next = blk->free_head;
    blk->free_head = pfn;
    blk->nr_free++;
    if (!blk->on_partial) {
        list_add(m, &zone->partial, b);
        blk->on_partial = 1;
    }
    if (blk->nr_free == PG_PMD_NR) {
        /* re-merge: every frame of the block is free again */
        list_del(m, &zone->partial, b);
        blk->on_partial = 0;
        blk->state = PG_BLOCK_WHOLE;
        blk->free_head = PG_NIL;
        blk->nr_free = 0;
        list_add(m, &zone->whole, b);
    }
}

int64_t pg_folio_alloc(pg_machine *m, int order, int zone_id)
{
    if ((order != 0 && order != PG_PMD_ORDER) ||
        (zone_id != PG_ZONE_NORMAL && zone_id != PG_ZONE_MOVABLE))
        return -PG_EINVAL;
    struct pg_zone *zone = &m->zones[zone_id];
    int64_t pfn;
    if (pg_should_fail(m, PG_FAIL_FOLIO))
        return -PG_ENOMEM;

    pg_spin_lock(&zone->lock);
    if (order == 0) {
        pfn = zone_alloc_small(m, zone);
    } else if (zone->whole >= 0) {
        uint32_t b = (uint32_t)zone->whole;
        list_del(m, &zone->whole, b);
        m->blocks[b].state = PG_BLOCK_HUGE;
        pfn = (int64_t)b * PG_PMD_NR;
    } else {
        pfn = -PG_ENOMEM;
    }
    if (pfn >= 0)
        pg_store_relaxed(&zone->nr_free,
                         pg_load_relaxed(&zone->nr_free) - ((uint64_t)1 << order));
    pg_spin_unlock(&zone->lock);
    if (pfn < 0)
        return pfn;

    /* The frames are ours now.  Initialise everything, then publish the
     * refcount last with release: a racing "add unless zero" on a stale
     * pfn sees either 0 or a fully initialised folio. */
    uint64_t nr = (uint64_t)1 << order;
    for (uint64_t i = 0; i < nr; i++) {
        struct pg_frame *f = &m->frames[(uint64_t)pfn + i];
        PG_BUG_ON(m, !(pg_load_relaxed(&f->flags) & PG_F_FREE),
                  "allocating pfn %llu which is not free (flags %#x)",
                  (unsigned long long)pfn + i, pg_load_relaxed(&f->flags));
        pg_store_relaxed(&f->pincount, 0);
        pg_store_relaxed(&f->mapcount, 0);
        pg_store_relaxed(&f->mapping, 0);
        pg_store_relaxed(&f->index, 0);
        pg_store_relaxed(&f->content, 0);
        pg_store_relaxed(&f->head, (uint32_t)pfn);
        pg_store_relaxed(&f->order, (uint32_t)order);
        pg_store_release(&f->flags, (uint32_t)(i == 0 ? PG_F_HEAD : PG_F_TAIL));
    }
    pg_store_release(&m->frames[pfn].refcount, 1);
    return pfn;
}

/* the last reference is gone: check the page state, scrub, give back */
void pg_folio_free_internal(pg_machine *m, uint64_t head)
{
    struct pg_frame *h = &m->frames[head];
    uint32_t order = pg_load_relaxed(&h->order);
    uint64_t nr = (uint64_t)1 << order;

    PG_BUG_ON(m, pg_load_relaxed(&h->pincount) != 0,
              "freeing folio %llu with pincount %d", (unsigned long long)head,
              pg_load_relaxed(&h->pincount));
    for (uint64_t i = 0; i < nr; i++) {
        struct pg_frame *f = &m->frames[head + i];
        PG_BUG_ON(m, pg_load_relaxed(&f->mapcount) != 0,
                  "freeing pfn %llu which is still mapped (mapcount %d)",
                  (unsigned long long)(head + i), pg_load_relaxed(&f->mapcount));
        pg_store_relaxed(&f->mapcount, 0);
        pg_store_relaxed(&f->pincount, 0);
        pg_store_relaxed(&f->mapping, 0);
        pg_store_relaxed(&f->index, 0);
        pg_store_relaxed(&f->content, 0);
        frame_set_free(m, head + i);
    }

    struct pg_zone *zone = &m->zones[h->zone];
    pg_spin_lock(&zone->lock);
    if (order == 0) {
        zone_free_small(m, zone, (uint32_t)head);
    } else {
        uint32_t b = (uint32_t)(head / PG_PMD_NR);
        m->blocks[b].state = PG_BLOCK_WHOLE;
        list_add(m, &zone->whole, b);
    }
    pg_store_relaxed(&zone->nr_free, pg_load_relaxed(&zone->nr_free) + nr);
    pg_spin_unlock(&zone->lock);
}

/* ---- reference counting -------------------------------------------------- */

int64_t pg_folio_get(pg_machine *m, uint64_t pfn, int refs)
{
    if (!pfn_ok(m, pfn) || refs <= 0)
        return -PG_EINVAL;
    return pg_folio_try_get(m, pfn, refs);
}

int64_t pg_folio_put(pg_machine *m, uint64_t pfn, int refs)
{
    if (!pfn_ok(m, pfn) || refs <= 0)
        return -PG_EINVAL;
    return pg_folio_put_internal(m, pfn, refs);
}

static uint32_t combined_flags(pg_machine *m, uint64_t pfn)
{
    uint64_t head = pg_frame_head(m, pfn);
    uint32_t own = pg_load_acquire(&m->frames[pfn].flags);
    uint32_t hf = pg_load_acquire(&m->frames[head].flags);
    return own | (hf & ~PG_F_PER_PAGE);
}

int pg_frame_info(pg_machine *m, uint64_t pfn, struct pg_frame_info *out)
{
    if (!pfn_ok(m, pfn) || !out)
        return -PG_EINVAL;
    struct pg_frame *f = &m->frames[pfn];
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    out->pfn = pfn;
    out->head = head;
    out->index = pg_load_acquire(&h->index);
    out->mapping = pg_load_acquire(&h->mapping);
    out->content = pg_load_acquire(&f->content);
    out->refcount = pg_load_acquire(&h->refcount);
    out->pincount = pg_load_acquire(&h->pincount);
    out->mapcount = pg_load_acquire(&f->mapcount);
    out->flags = combined_flags(m, pfn);
    out->order = (int32_t)pg_load_relaxed(&h->order);
    out->zone = f->zone;
    return 0;
}

int64_t pg_folio_flags_update(pg_machine *m, uint64_t pfn, uint32_t set,
                              uint32_t clear)
{
    if (!pfn_ok(m, pfn) || ((set | clear) & PG_F_STRUCTURAL))
        return -PG_EINVAL;
    uint64_t head = pg_frame_head(m, pfn);
    if (pg_load_acquire(&m->frames[head].flags) & PG_F_FREE)
        return -PG_EINVAL;
    uint32_t old = combined_flags(m, pfn);
    uint32_t page_set = set & PG_F_ANON_EXCLUSIVE, page_clear = clear & PG_F_ANON_EXCLUSIVE;
    uint32_t folio_set = set & ~PG_F_ANON_EXCLUSIVE,
             folio_clear = clear & ~PG_F_ANON_EXCLUSIVE;
    struct pg_frame *f = &m->frames[pfn], *h = &m->frames[head];
    /* each word is updated atomically; hardware-like concurrent updates of
     * other bits are never lost */
    if (page_clear)
        old = (old & ~PG_F_ANON_EXCLUSIVE) |
              (pg_fetch_and(&f->flags, ~page_clear) & PG_F_ANON_EXCLUSIVE);
    if (page_set)
        old = (old & ~PG_F_ANON_EXCLUSIVE) |
              (pg_fetch_or(&f->flags, page_set) & PG_F_ANON_EXCLUSIVE);
    if (folio_clear)
        pg_fetch_and(&h->flags, ~folio_clear);
    if (folio_set)
        pg_fetch_or(&h->flags, folio_set);
    return old;
}

int pg_folio_set_mapping(pg_machine *m, uint64_t pfn, uint64_t mapping,
                         uint64_t index)
{
    if (!pfn_ok(m, pfn))
        return -PG_EINVAL;
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    uint32_t hf = pg_load_acquire(&h->flags);
    if (hf & (PG_F_FREE | PG_F_ZERO))
        return -PG_EINVAL;
    pg_store_release(&h->index, index);
    /* mapping last: a lockless reader that sees it sees the index too */
    pg_store_release(&h->mapping, mapping);
    /* truncation clears it here while GUP-fast may be between its
     * re-check and its read of ->mapping */
    PG_YIELD(m, -1, PG_W_FOLIO_MAPPING_SET);
    return 0;
}

int64_t pg_mapcount_add_internal(pg_machine *m, uint64_t pfn, int delta)
{
    struct pg_frame *f = &m->frames[pfn];
    int32_t old = pg_load_relaxed(&f->mapcount);
    for (;;) {
        if (PG_BUG_ON(m, (int64_t)old + delta < 0,
                      "mapcount of pfn %llu would go below zero (%d%+d)",
                      (unsigned long long)pfn, old, delta))
            return -PG_EINVAL;
        if ((int64_t)old + delta > INT32_MAX)
            return -PG_EOVERFLOW;
        if (pg_cas(&f->mapcount, &old, old + delta))
            return (int64_t)old + delta;
    }
}

int64_t pg_frame_mapcount_add(pg_machine *m, uint64_t pfn, int delta)
{
    if (!pfn_ok(m, pfn))
        return -PG_EINVAL;
    return pg_mapcount_add_internal(m, pfn, delta);
}

int pg_frame_read(pg_machine *m, uint64_t pfn, uint64_t *out)
{
    if (!pfn_ok(m, pfn) || !out)
        return -PG_EINVAL;
    *out = pg_load_acquire(&m->frames[pfn].content);
    return 0;
}

int pg_frame_write(pg_machine *m, uint64_t pfn, uint64_t value)
{
    if (!pfn_ok(m, pfn))
        return -PG_EINVAL;
    uint32_t fl = combined_flags(m, pfn);
    if (fl & PG_F_ZERO)
        return -PG_EPERM; /* the zero page stays zero */
    if (fl & PG_F_FREE)
        return -PG_EINVAL;
    pg_store_release(&m->frames[pfn].content, value);
    return 0;
}

int pg_folio_copy(pg_machine *m, uint64_t dst, uint64_t src)
{
    if (!pfn_ok(m, dst) || !pfn_ok(m, src) || dst == src)
        return -PG_EINVAL;
    uint32_t df = pg_load_acquire(&m->frames[dst].flags);
    uint32_t sf = pg_load_acquire(&m->frames[src].flags);
    if (!(df & PG_F_HEAD) || !(sf & PG_F_HEAD) || (df & (PG_F_FREE | PG_F_ZERO)))
        return -PG_EINVAL;
    uint32_t order = pg_load_relaxed(&m->frames[src].order);
    if (order != pg_load_relaxed(&m->frames[dst].order))
        return -PG_EINVAL;
    for (uint64_t i = 0; i < ((uint64_t)1 << order); i++)
        pg_store_release(&m->frames[dst + i].content,
                         pg_load_acquire(&m->frames[src + i].content));
    return 0;
}

/* ---- writeback, a run of folios per call ------------------------------------ */

/* every pfn the head of a live folio that is not the zero page (nothing
 * writes the zero page back): checked before anything changes */
static bool live_heads(pg_machine *m, const uint64_t *pfns, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (!pfn_ok(m, pfns[i]) || pg_frame_head(m, pfns[i]) != pfns[i] ||
            (pg_load_acquire(&m->frames[pfns[i]].flags) & (PG_F_FREE | PG_F_ZERO)))
            return false;
    }
    return true;
}

int pg_folios_clear_dirty_for_io(pg_machine *m, const uint64_t *pfns, int64_t n,
                                 const uint8_t *pte_dirty, uint32_t *old)
{
    if (n < 0 || (n > 0 && (!pfns || !old)) || !live_heads(m, pfns, n))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++) {
        _Atomic uint32_t *flags = &m->frames[pfns[i]].flags;
        /* mirrors folio_clear_dirty_for_io(): a mapping folio_mkclean()
         * cleaned moves its dirtiness to the folio (folio_mark_dirty) ... */
        if (pte_dirty && pte_dirty[i])
            pg_fetch_or(flags, (uint32_t)PG_F_DIRTY);
        /* ... then folio_test_clear_dirty(); the next write to a cleaned
         * folio needs a new page_mkwrite */
        uint32_t was = pg_fetch_and(flags, ~(uint32_t)(PG_F_DIRTY | PG_F_MKWRITE));
        /* mirrors folio_start_writeback() for each folio that was dirty */
        if (was & PG_F_DIRTY)
            pg_fetch_or(flags, (uint32_t)PG_F_WRITEBACK);
        old[i] = was;
    }
    return 0;
}

int pg_folios_flags_update(pg_machine *m, const uint64_t *pfns, int64_t n,
                           uint32_t set, uint32_t clear)
{
    if (n < 0 || (n > 0 && !pfns) || ((set | clear) & (PG_F_STRUCTURAL | PG_F_PER_PAGE)) ||
        !live_heads(m, pfns, n))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++) {
        _Atomic uint32_t *flags = &m->frames[pfns[i]].flags;
        if (clear)
            pg_fetch_and(flags, ~clear);
        if (set)
            pg_fetch_or(flags, set);
    }
    return 0;
}

int pg_frames_read(pg_machine *m, const uint64_t *pfns, int64_t n, uint64_t *out)
{
    if (n < 0 || (n > 0 && (!pfns || !out)))
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++)
        if (!pfn_ok(m, pfns[i]))
            return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++)
        out[i] = pg_load_acquire(&m->frames[pfns[i]].content);
    return 0;
}

int pg_frames_mapcount(pg_machine *m, uint64_t pfn, int64_t n, int32_t *out)
{
    if (n < 0 || (n > 0 && !out) || pfn > m->nr_frames || (uint64_t)n > m->nr_frames - pfn)
        return -PG_EINVAL;
    for (int64_t i = 0; i < n; i++)
        out[i] = pg_load_acquire(&m->frames[pfn + (uint64_t)i].mapcount);
    return 0;
}

int pg_frames_snapshot(pg_machine *m, int32_t *refcount, int32_t *mapcount,
                       uint32_t *flags, uint64_t *mapping, uint64_t *content)
{
    /* raw per-frame words: refcount / mapping of a large folio are on its
     * head (tails read 0); flags are the frame's own word */
    for (uint64_t pfn = 0; pfn < m->nr_frames; pfn++) {
        struct pg_frame *f = &m->frames[pfn];
        if (refcount)
            refcount[pfn] = pg_load_relaxed(&f->refcount);
        if (mapcount)
            mapcount[pfn] = pg_load_relaxed(&f->mapcount);
        if (flags)
            flags[pfn] = pg_load_relaxed(&f->flags);
        if (mapping)
            mapping[pfn] = pg_load_relaxed(&f->mapping);
        if (content)
            content[pfn] = pg_load_relaxed(&f->content);
    }
    return 0;
}

/* the rules asked from Python: a frame of a live folio, else -EINVAL */
static int64_t live_head(pg_machine *m, uint64_t pfn)
{
    if (!pfn_ok(m, pfn))
        return -PG_EINVAL;
    uint64_t head = pg_frame_head(m, pfn);
    if (pg_load_acquire(&m->frames[head].flags) & PG_F_FREE)
        return -PG_EINVAL;
    return (int64_t)head;
}

int pg_page_anon_exclusive(pg_machine *m, uint64_t pfn)
{
    int64_t head = live_head(m, pfn);
    return head < 0 ? (int)head : page_anon_exclusive(m, pfn, (uint64_t)head);
}

int pg_folio_is_longterm_pinnable(pg_machine *m, uint64_t pfn)
{
    int64_t head = live_head(m, pfn);
    return head < 0 ? (int)head : folio_is_longterm_pinnable(m, (uint64_t)head);
}

int pg_folio_maybe_dma_pinned(pg_machine *m, uint64_t pfn)
{
    int64_t head = live_head(m, pfn);
    return head < 0 ? (int)head : folio_maybe_dma_pinned(m, (uint64_t)head);
}

/* ---- address_space records ----------------------------------------------- */

static struct pg_as *as_slot(pg_machine *m, uint64_t id)
{
    if (id == 0)
        return NULL;
    uint64_t i = id - 1;
    if (i / PG_AS_CHUNK >= PG_AS_MAX_CHUNKS)
        return NULL;
    struct pg_as *chunk = pg_load_acquire(&m->as_chunks[i / PG_AS_CHUNK]);
    return chunk ? &chunk[i % PG_AS_CHUNK] : NULL;
}

int64_t pg_as_new(pg_machine *m, uint32_t kind)
{
    if (kind & ~(uint32_t)(PG_AS_SHMEM | PG_AS_HUGETLB | PG_AS_SECRETMEM | PG_AS_DAX |
                            PG_AS_DIRTY_TRACKED))
        return -PG_EINVAL;
    if (pg_should_fail(m, PG_FAIL_AS))
        return -PG_ENOMEM;
    uint32_t i;
    pg_spin_lock(&m->as_lock);
    if (m->as_free != PG_NIL) {
        i = m->as_free;
        m->as_free = as_slot(m, (uint64_t)i + 1)->free_next;
    } else {
        if (m->as_next % PG_AS_CHUNK == 0) {
            uint32_t c = m->as_next / PG_AS_CHUNK;
            if (c >= PG_AS_MAX_CHUNKS) {
                pg_spin_unlock(&m->as_lock);
                return -PG_ENOSPC;
            }
            struct pg_as *chunk = calloc(PG_AS_CHUNK, sizeof(*chunk));
            if (!chunk) {
                pg_spin_unlock(&m->as_lock);
                return -PG_ENOMEM;
            }
            /* published once, never moved: lockless readers load it */
            pg_store_release(&m->as_chunks[c], chunk);
            m->as_nr_chunks = c + 1;
        }
        i = m->as_next++;
    }
    pg_spin_unlock(&m->as_lock);

    struct pg_as *a = as_slot(m, (uint64_t)i + 1);
    a->slot = i;
    pg_fetch_add_relaxed(&a->generation, 1);
    pg_store_relaxed(&a->kind, kind);
    pg_store_release(&a->magic, PG_AS_MAGIC_LIVE);
    pg_fetch_add_relaxed(&m->as_live, 1);
    return (int64_t)i + 1;
}

static void as_free_rcu(pg_machine *m, struct pg_rcu_head *h)
{
    struct pg_as *a = (struct pg_as *)((char *)h - offsetof(struct pg_as, rcu));
    uint32_t i = a->slot;
    /* poison: a reader that still holds this id reads FREED */
    pg_store_release(&a->magic, PG_AS_MAGIC_FREED);
    pg_store_relaxed(&a->kind, 0);
    pg_fetch_add_relaxed(&a->generation, 1);
    PG_YIELD(m, -1, PG_W_AS_RCU_FREED);
    pg_spin_lock(&m->as_lock);
    a->free_next = m->as_free;
    m->as_free = i;
    pg_spin_unlock(&m->as_lock);
    pg_fetch_sub_relaxed(&m->as_pending, 1);
}

int pg_as_release(pg_machine *m, uint64_t id)
{
    struct pg_as *a = as_slot(m, id);
    if (!a)
        return -PG_EINVAL;
    uint32_t live = PG_AS_MAGIC_LIVE;
    /* exactly one release wins; a second one is refused */
    if (!pg_cas(&a->magic, &live, PG_AS_MAGIC_PENDING))
        return -PG_EINVAL;
    pg_fetch_sub_relaxed(&m->as_live, 1);
    pg_fetch_add_relaxed(&m->as_pending, 1);
    PG_YIELD(m, -1, PG_W_AS_RELEASE_BEFORE_CALL_RCU);
    if (pg_mutant(m, PG_MUT_AS_FREE_NO_RCU)) {
        as_free_rcu(m, &a->rcu); /* the bug: no grace period */
        return 0;
    }
    pg_call_rcu(m, &a->rcu, as_free_rcu);
    pg_rcu_poll(m); /* starts the grace period; frees only if no reader */
    return 0;
}

int64_t pg_as_kind(pg_machine *m, uint64_t id)
{
    struct pg_as *a = as_slot(m, id);
    if (!a)
        return -PG_EINVAL;
    uint32_t magic = pg_load_acquire(&a->magic);
    if (magic == 0)
        return -PG_EINVAL; /* never handed out */
    if (magic != PG_AS_MAGIC_LIVE)
        return -PG_ENOENT;
    return pg_load_relaxed(&a->kind);
}

struct pg_as *pg_as_lookup_rcu(pg_machine *m, int cpu, uint64_t id)
{
    struct pg_as *a = as_slot(m, id);
    if (!a)
        return NULL;
    uint32_t magic = pg_load_acquire(&a->magic);
    if (PG_BUG_ON(m, magic != PG_AS_MAGIC_LIVE && magic != PG_AS_MAGIC_PENDING,
                  "cpu %d: use-after-free of address_space %llu (magic %#x)",
                  cpu, (unsigned long long)id, magic))
        return NULL;
    return a;
}

void pg_as_fini(pg_machine *m)
{
    for (uint32_t c = 0; c < PG_AS_MAX_CHUNKS; c++) {
        free(pg_load_relaxed(&m->as_chunks[c]));
        pg_store_relaxed(&m->as_chunks[c], NULL);
    }
}

/* ---- folio split ----------------------------------------------------------- */

/* mirrors split_folio() / __split_huge_page() for an anonymous THP: the
 * order-9 folio becomes 512 order-0 folios, each keeping its page's
 * content, mapcount and ANON_EXCLUSIVE bit, the folio-wide flags, the
 * mapping and its own index.  Refused (-PG_EBUSY, nothing changed) while
 * the folio may be DMA-pinned or holds references beyond one per mapping
 * (can_split_folio()): the split freezes the refcount at exactly that
 * many (folio_ref_freeze), so a racing "add unless zero" fails instead
 * of landing on a folio that is about to stop existing.  Each new folio's
 * refcount is its page's mapcount; a page nothing maps any more is freed.
 * The page-table entries stay: they map pfns, which the split keeps (the
 * kernel's unmap_folio / remap_page round trip ends with the same PTEs).
 * PMD mappings are split first by the caller, which has the reverse map
 * (a PMD leaf left over would still be counted consistently: one mapping
 * and one reference on the head page's folio). */
int pg_split_folio(pg_machine *m, int cpu, uint64_t pfn)
{
    if (!pfn_ok(m, pfn) || (cpu != -1 && !pg_cpu_ok(m, cpu)))
        return -PG_EINVAL;
    uint64_t head = pg_frame_head(m, pfn);
    struct pg_frame *h = &m->frames[head];
    uint32_t hf = pg_load_acquire(&h->flags);
    if (pg_load_relaxed(&h->order) != PG_PMD_ORDER ||
        (hf & (PG_F_FREE | PG_F_HUGETLB | PG_F_ZERO | PG_F_SLAB)) ||
        (pg_load_acquire(&h->mapping) & PG_MAPPING_FLAGS) != PG_MAPPING_ANON)
        return -PG_EINVAL; /* only anonymous THPs split here */
    if (folio_maybe_dma_pinned(m, head))
        return -PG_EBUSY;
    /* one reference per mapping: PTE mappings count on their page, a PMD
     * mapping on the head (mm/memory.c's convention) */
    int64_t expected = 0;
    for (uint64_t i = 0; i < PG_PMD_NR; i++)
        expected += pg_load_acquire(&m->frames[head + i].mapcount);
    int32_t want = (int32_t)expected;
    if (expected == 0 || !pg_cas(&h->refcount, &want, 0))
        return -PG_EBUSY; /* extra references (a GET, a pin in flight) */
    PG_YIELD(m, cpu, PG_W_SPLIT_FOLIO_FROZEN);
    uint64_t mapping = pg_load_relaxed(&h->mapping);
    uint64_t index = pg_load_relaxed(&h->index);
    uint32_t folio_flags = hf & ~PG_F_PER_PAGE;
    /* the block stops being one huge allocation: a split block with no
     * free frame, which frees frame by frame from now on */
    struct pg_zone *zone = &m->zones[h->zone];
    struct pg_block *blk = &m->blocks[head / PG_PMD_NR];
    pg_spin_lock(&zone->lock);
    blk->state = PG_BLOCK_SPLIT;
    blk->free_head = PG_NIL;
    blk->nr_free = 0;
    blk->on_partial = 0;
    pg_spin_unlock(&zone->lock);
    /* tails first, each published by its head word (release): a reader
     * that sees head == self sees a complete order-0 folio */
    for (uint64_t i = PG_PMD_NR; i-- > 1;) {
        struct pg_frame *f = &m->frames[head + i];
        uint32_t own = pg_load_relaxed(&f->flags) & PG_F_ANON_EXCLUSIVE;
        pg_store_relaxed(&f->pincount, 0);
        pg_store_relaxed(&f->mapping, mapping);
        pg_store_relaxed(&f->index, index + i);
        pg_store_relaxed(&f->order, 0);
        pg_store_relaxed(&f->flags, folio_flags | own | PG_F_HEAD);
        pg_store_relaxed(&f->refcount, pg_load_relaxed(&f->mapcount));
        pg_store_release(&f->head, (uint32_t)(head + i));
    }
    pg_store_relaxed(&h->order, 0);
    /* unfreeze the head last (folio_ref_unfreeze) */
    pg_store_release(&h->refcount, pg_load_relaxed(&h->mapcount));
    /* pages nothing maps any more go back to the allocator (the kernel
     * drops them at the end of __split_huge_page) */
    for (uint64_t i = 0; i < PG_PMD_NR; i++) {
        struct pg_frame *f = &m->frames[head + i];
        if (pg_load_acquire(&f->refcount) == 0)
            pg_folio_free_internal(m, head + i);
    }
    return 0;
}
