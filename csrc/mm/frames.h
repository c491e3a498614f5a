/*
 * mm/frames.h - physical memory inside the core: folio reference and map
 * counts without bounds checks (callers hold a valid pfn), and the lockless
 * lookup of an address_space record.  The exported calls are in pygup.h.
 */
#ifndef PYGUP_MM_FRAMES_H
#define PYGUP_MM_FRAMES_H

#include "internal.h"

int pg_frames_init(pg_machine *m);
void pg_frames_fini(pg_machine *m);
void pg_as_fini(pg_machine *m);
/* drop refs on the folio containing pfn (no bounds check) */
int64_t pg_folio_put_internal(pg_machine *m, uint64_t pfn, int refs);
/* "add unless zero" on pfn's folio: new count, or -PG_EINVAL if zero */
int64_t pg_folio_try_get(pg_machine *m, uint64_t pfn, int refs);
int64_t pg_mapcount_add_internal(pg_machine *m, uint64_t pfn, int delta);
/* a record still readable under RCU (live or pending); NULL + violation
 * if it is poisoned: the lockless mapping check of GUP-fast uses it */
struct pg_as *pg_as_lookup_rcu(pg_machine *m, int cpu, uint64_t id);

/* folio_maybe_dma_pinned() of the folio whose head is head */
bool folio_maybe_dma_pinned(pg_machine *m, uint64_t head);

#endif /* PYGUP_MM_FRAMES_H */
