/*
 * cpu.c - emulated CPUs: IRQ-disable nesting, IPIs and their
 * acknowledgement, per-CPU TLBs, TLB shootdown, and the MMU's user access
 * (TLB lookup, hardware page walk setting ACCESSED / DIRTY, TLB fill).
 *
 * Protocol.  A CPU's lock guards its IRQ nesting, its pending-IPI list and
 * (while its IRQs are enabled) its TLB.  A sender locks each target: if the
 * target's IRQs are enabled it runs the handler for it right there; if not
 * it queues a request, which the target runs when it enables IRQs, and then
 * waits.  So a CPU with IRQs off (a user access, GUP-fast) holds off every
 * shootdown and IPI sync that targets it, as in the kernel.  A user access
 * also holds its CPU's lock while it uses the TLB.  In the BROADCAST flush
 * mode a shootdown invalidates a target's TLB under its lock whatever its
 * IRQs (so it waits only for a user access in flight); IPI syncs stay IPIs.
 */
#define _GNU_SOURCE /* syscall(), gettid / tgkill numbers */
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

void pg_cpus_init(pg_machine *m)
{
    for (int i = 0; i < PG_MAX_CPUS; i++) {
        pg_spin_init(&m->cpus[i].lock);
        m->cpus[i].pending = NULL;
    }
}

/* Invalidate cpu's entries for mm in [svpn, evpn) (or all of mm); with the
 * cpu's lock held, or by the cpu itself with IRQs off. */
static void tlb_flush_local(pg_machine *m, struct pg_cpu *c, int kind,
                            uint64_t mmid, uint64_t svpn, uint64_t evpn)
{
    uint64_t n = 0;
    if (kind == PG_IPI_SYNC)
        return;
    for (int i = 0; i < PG_TLB_ENTRIES; i++) {
        struct pg_tlb_entry *te = &c->tlb[i];
        if (te->mm_plus1 != mmid + 1)
            continue;
        if (kind == PG_IPI_FLUSH_RANGE && (te->vpn < svpn || te->vpn >= evpn))
            continue;
        te->mm_plus1 = 0;
        n++;
    }
    if (n)
        pg_fetch_add_relaxed(&m->tlb_flushed_entries, n);
}

/* the handlers queued while IRQs were off; with the cpu's lock held */
static void run_pending_ipis(pg_machine *m, struct pg_cpu *c)
{
    struct pg_ipi_req *r = c->pending;
    c->pending = NULL;
    while (r) {
        /* read next before acknowledging: the request lives on the
         * sender's stack and is gone once it sees done */
        struct pg_ipi_req *next = r->next;
        tlb_flush_local(m, c, r->kind, r->mm, r->start_vpn, r->end_vpn);
        pg_store_release(&r->done, 1);
        r = next;
    }
}

int pg_local_irq_disable(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    struct pg_cpu *c = &m->cpus[cpu];
    pg_spin_lock(&c->lock);
    int n = pg_load_relaxed(&c->irq_nesting);
    if (n == 0 && c->rcu_nesting == 0)
        pg_rcu_cpu_enter(m, cpu); /* IRQs-off is an RCU read-side section */
    pg_store_release(&c->irq_nesting, n + 1);
    pg_spin_unlock(&c->lock);
    return 0;
}

int pg_local_irq_enable(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    struct pg_cpu *c = &m->cpus[cpu];
    pg_spin_lock(&c->lock);
    int n = pg_load_relaxed(&c->irq_nesting);
    if (n == 0) {
        pg_spin_unlock(&c->lock);
        return -PG_EINVAL; /* unbalanced enable */
    }
    pg_store_release(&c->irq_nesting, n - 1);
    if (n == 1) {
        run_pending_ipis(m, c);
        if (c->rcu_nesting == 0)
            pg_rcu_cpu_exit(m, cpu);
    }
    pg_spin_unlock(&c->lock);
    return 0;
}

int pg_irqs_disabled(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    return pg_cpu_irqs_off(m, cpu) ? 1 : 0;
}

/* Send one IPI of `kind` to every CPU in mask but `cpu`, and wait for each
 * acknowledgement.  The caller's IRQs are enabled (checked by callers). */
static void send_ipis(pg_machine *m, int cpu, uint64_t mask, int kind,
                      uint64_t mmid, uint64_t svpn, uint64_t evpn)
{
    struct pg_ipi_req reqs[PG_MAX_CPUS];
    int nq = 0;
    for (int t = 0; t < m->nr_cpus; t++) {
        if (t == cpu || !(mask & ((uint64_t)1 << t)))
            continue;
        struct pg_cpu *c = &m->cpus[t];
        pg_fetch_add_relaxed(&m->ipis_sent, 1);
        pg_spin_lock(&c->lock);
        if (pg_load_relaxed(&c->irq_nesting) == 0 ||
            (kind != PG_IPI_SYNC &&
             pg_load_relaxed(&m->tlb_flush_mode) == PG_TLB_FLUSH_BROADCAST)) {
            /* IRQs enabled: the handler runs at once.  A broadcast
             * invalidation needs no handler: it lands even in an IRQs-off
             * section (a user access in flight holds the CPU lock, so it
             * completes first) */
            tlb_flush_local(m, c, kind, mmid, svpn, evpn);
        } else {
            struct pg_ipi_req *r = &reqs[nq++];
            r->target = t;
            r->kind = kind;
            r->mm = mmid;
            r->start_vpn = svpn;
            r->end_vpn = evpn;
            atomic_init(&r->done, 0);
            r->next = c->pending;
            c->pending = r;
        }
        pg_spin_unlock(&c->lock);
    }
    for (int i = 0; i < nq; i++) {
        unsigned spins = 0, polls = 0;
        while (!pg_load_acquire(&reqs[i].done)) {
            pg_cpu_wait(&spins, "ipi_wait");
            /* the kernel's "CPU N didn't respond to the IPI": here the
             * cause can be found, a target whose thread ended inside an
             * IRQs-off section, and the section ended on its behalf */
            if (++polls % PG_ORPHAN_POLL == 0)
                pg_cpu_reap_orphan(m, reqs[i].target);
        }
    }
}

/* Does OS thread tid of this process still exist?  tgkill() with signal 0
 * delivers nothing; ESRCH means the thread has ended.  Thread ids are
 * handed out cyclically, so a reused id within one wait is not a concern. */
static bool thread_exists(int32_t tid)
{
    if (syscall(SYS_tgkill, (long)getpid(), (long)tid, 0L) == 0)
        return true;
    return errno != ESRCH;
}

/* A CPU whose IRQs-off or RCU read-side section was opened by a thread that
 * has ended would hold off every IPI and grace period for ever.  End the
 * section on its behalf: nesting to zero, the queued IPIs run, the RCU
 * section closed.  Never fires for a live thread, however slow; returns
 * whether it did anything. */
bool pg_cpu_reap_orphan(pg_machine *m, int cpu)
{
    struct pg_cpu *c = &m->cpus[cpu];
    int32_t tid = pg_load_relaxed(&c->section_tid);
    if (tid <= 0 || thread_exists(tid))
        return false;
    bool reaped = false;
    pg_spin_lock(&c->lock);
    if (pg_load_relaxed(&c->section_tid) == tid &&
        (pg_load_relaxed(&c->irq_nesting) > 0 || c->rcu_nesting > 0)) {
        pg_store_release(&c->irq_nesting, 0);
        c->rcu_nesting = 0;
        run_pending_ipis(m, c);
        pg_rcu_cpu_exit(m, cpu);
        pg_fetch_add_relaxed(&m->orphans_reaped, 1);
        reaped = true;
    }
    pg_spin_unlock(&c->lock);
    return reaped;
}

int pg_flush_tlb_mm_range(pg_machine *m, int cpu, struct pg_mm *mm,
                          uint64_t mmid, uint64_t start, uint64_t end,
                          bool all_cpus)
{
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY; /* waiting for the others would deadlock */
    uint64_t svpn = start >> PG_PAGE_SHIFT;
    uint64_t evpn = (end + PG_PAGE_SIZE - 1) >> PG_PAGE_SHIFT;
    pg_fetch_add_relaxed(&m->tlb_shootdowns, 1);

    struct pg_cpu *self = &m->cpus[cpu];
    pg_spin_lock(&self->lock);
    tlb_flush_local(m, self, PG_IPI_FLUSH_RANGE, mmid, svpn, evpn);
    pg_spin_unlock(&self->lock);

    /* the entry changes before the mask read: pairs with the fence in
     * pg_mm_cpumask_set, so a CPU that walks after our change sees it and
     * a CPU that walked before is in the mask */
    pg_smp_mb();
    uint64_t mask = all_cpus ? ~(uint64_t)0 : pg_load_acquire(&mm->cpumask);
    send_ipis(m, cpu, mask, PG_IPI_FLUSH_RANGE, mmid, svpn, evpn);
    return 0;
}

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

int pg_set_tlb_flush_mode(pg_machine *m, int mode)
{
    if (mode != PG_TLB_FLUSH_IPI && mode != PG_TLB_FLUSH_BROADCAST)
        return -PG_EINVAL;
    return atomic_exchange_explicit(&m->tlb_flush_mode, mode, memory_order_acq_rel);
}

int pg_ipi_sync_internal(pg_machine *m, int cpu)
{
    if (pg_cpu_irqs_off(m, cpu))
        return -PG_EBUSY;
    pg_smp_mb(); /* unlinks before the targets' state is read */
    send_ipis(m, cpu, ~(uint64_t)0, PG_IPI_SYNC, 0, 0, 0);
    return 0;
}

int pg_ipi_sync_all(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    return pg_ipi_sync_internal(m, cpu);
}

/* ---- the MMU ---------------------------------------------------------------- */

static inline struct pg_tlb_entry *tlb_slot(struct pg_cpu *c, uint64_t vpn)
{
    return &c->tlb[vpn % PG_TLB_ENTRIES];
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
    struct pg_tlb_entry *te = tlb_slot(c, vpn);
    uint64_t pfn;

    pg_mm_cpumask_set(m, mm, cpu);
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
            PG_YIELD(m, cpu, "walk_ad_cas_failed");
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

int pg_tlb_probe(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    struct pg_cpu *c = &m->cpus[cpu];
    uint64_t vpn = addr >> PG_PAGE_SHIFT;
    pg_spin_lock(&c->lock);
    struct pg_tlb_entry *te = tlb_slot(c, vpn);
    int hit = te->mm_plus1 == mmid + 1 && te->vpn == vpn;
    pg_spin_unlock(&c->lock);
    return hit;
}
