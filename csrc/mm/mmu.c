/*
 * mm/mmu.c - the hardware side of an mm: a user load or store as the MMU
 * does it (IRQs off, TLB lookup, the lockless page walk on a miss setting
 * ACCESSED / DIRTY with a compare-and-swap, TLB fill, the access to the
 * frame), and flush_tlb_range for an mm id.
 */
#include "internal.h"
#include "lib/report.h"
#include "kernel/sched.h"
#include "arch/cpu.h"
#include "mm/frames.h"
#include "mm/pgtable.h"

int pg_flush_tlb_range(pg_machine *m, int cpu, uint64_t mmid, uint64_t start,
                       uint64_t end)
{
    if (!pg_cpu_ok(m, cpu) || start > end)
        return -PG_EINVAL;
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm)
        return -PG_EINVAL;
    return pg_flush_tlb_mm_range(m, cpu, mm, mmid, start, end, false);
}

int pg_user_access(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr,
                   int write, uint64_t value, uint64_t *out)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    int rc = pg_local_irq_disable(m, cpu);
    if (rc < 0)
        return rc;
    /* the mm is looked up with IRQs off, so a destroy's IPI sync cannot
     * free its tables under this walk */
    struct pg_mm *mm = pg_mm_get(m, mmid);
    if (!mm) {
        pg_local_irq_enable(m, cpu);
        return -PG_EINVAL;
    }
    struct pg_cpu *c = &m->cpus[cpu];
    uint64_t vpn = addr >> PG_PAGE_SHIFT;
    struct pg_tlb_entry *te = pg_tlb_slot(c, vpn);
    uint64_t pfn;

    pg_mm_cpumask_set(mm, cpu);
    /* the access holds its CPU's lock: a broadcast invalidation (which does
     * not wait for IRQs to come on) waits for the access in flight, as a
     * TLBI's completion waits for the translations it kills */
    pg_spin_lock(&c->lock);
    if (te->mm_plus1 == mmid + 1 && te->vpn == vpn &&
        (!write || (te->writable && te->dirty))) {
        /* TLB hit: no walk, whatever the page table says now.  This is
         * how a skipped shootdown lets a write through. */
        pfn = te->pfn;
    } else {
        uint64_t e, n;
        int level;
        _Atomic uint64_t *slot;
        for (;;) {
            level = pg_walk_lockless(m, cpu, mm, addr, &e, &slot);
            if (level <= 0) {
                rc = level < 0 ? level : PG_FAULT_NOT_PRESENT;
                goto out;
            }
            if (!(e & PG_PTE_PRESENT)) {
                rc = (e & PG_PTE_PROTNONE) ? PG_FAULT_PROTNONE : PG_FAULT_NOT_PRESENT;
                goto out;
            }
            if (!(e & PG_PTE_USER)) {
                rc = PG_FAULT_NOT_PRESENT;
                goto out;
            }
            if (write && !(e & PG_PTE_WRITE)) {
                rc = PG_FAULT_WRITE_PROTECT;
                goto out;
            }
            n = e | PG_PTE_ACCESSED | (write ? PG_PTE_DIRTY : 0);
            /* the hardware's locked A/D update: if the entry changed since
             * the walk read it, walk again */
            if (n == e || pg_cas(slot, &e, n))
                break;
            PG_YIELD(m, cpu, PG_W_WALK_AD_CAS_FAILED);
        }
        pfn = pg_pte_pfn(n);
        if (level == PG_LEVEL_PMD)
            pfn += vpn & (PG_PMD_NR - 1);
        te->mm_plus1 = mmid + 1;
        te->vpn = vpn;
        te->pfn = pfn;
        te->writable = (n & PG_PTE_WRITE) != 0;
        te->dirty = (n & PG_PTE_DIRTY) != 0;
    }

    if (PG_BUG_ON(m, pfn >= m->nr_frames, "cpu %d: mm %llu %#llx maps pfn %llu "
                  "beyond memory", cpu, (unsigned long long)mmid,
                  (unsigned long long)addr, (unsigned long long)pfn)) {
        rc = -PG_EFAULT;
        goto out;
    }
    struct pg_frame *f = &m->frames[pfn];
    if (write) {
        if (PG_BUG_ON(m, pg_load_relaxed(&f->flags) & PG_F_ZERO,
                      "cpu %d: write to the zero page through mm %llu %#llx",
                      cpu, (unsigned long long)mmid, (unsigned long long)addr)) {
            rc = -PG_EFAULT;
            goto out;
        }
        /* invariant 5: no write through a stale TLB entry to a freed frame */
        if (PG_BUG_ON(m, pg_load_relaxed(&f->flags) & PG_F_FREE,
                      "cpu %d: write through a stale TLB entry to freed frame %llu "
                      "(mm %llu %#llx)", cpu, (unsigned long long)pfn,
                      (unsigned long long)mmid, (unsigned long long)addr)) {
            rc = -PG_EFAULT;
            goto out;
        }
        /* invariant 3: a folio of a dirty-tracked mapping is never written
         * through a PTE without a page_mkwrite since its last clean */
        uint64_t head = pg_frame_head(m, pfn);
        uint64_t mapping = pg_load_acquire(&m->frames[head].mapping);
        if (mapping && !(mapping & PG_MAPPING_FLAGS) &&
            !(pg_load_acquire(&m->frames[head].flags) & PG_F_MKWRITE)) {
            struct pg_as *a = pg_as_lookup_rcu(m, cpu, mapping >> 2);
            PG_BUG_ON(m, a && (pg_load_relaxed(&a->kind) & PG_AS_DIRTY_TRACKED),
                      "cpu %d: write-notify bypass: user write to clean folio %llu of "
                      "a dirty-tracked file without page_mkwrite (mm %llu %#llx)", cpu,
                      (unsigned long long)head, (unsigned long long)mmid,
                      (unsigned long long)addr);
        }
        pg_store_release(&f->content, value);
        if (out)
            *out = value;
    } else if (out) {
        *out = pg_load_acquire(&f->content);
    }
    rc = PG_FAULT_NONE;
out:
    pg_spin_unlock(&c->lock);
    /* enabling IRQs runs the shootdowns that waited for this access */
    pg_local_irq_enable(m, cpu);
    return rc;
}
