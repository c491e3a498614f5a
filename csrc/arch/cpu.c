/*
 * arch/cpu.c - emulated CPUs: IRQ-disable nesting, IPIs and their
 * acknowledgement, per-CPU TLBs, an mm's cpumask and TLB shootdown to it.
 * The MMU's user access (TLB lookup, hardware walk, TLB fill) is in
 * mm/mmu.c: it needs the page tables, which sit above this layer.
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
#include "kernel/rcu.h"
#include "kernel/sched.h"
#include "arch/cpu.h"

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
            pg_cpu_wait(&spins, PG_W_IPI_WAIT);
            /* the kernel's "CPU N didn't respond to the IPI": here the
             * cause can be found, a target whose thread ended inside an
             * IRQs-off section, and the section ended on its behalf */
            if (pg_orphan_poll_due(++polls))
                pg_cpu_reap_orphan(m, reqs[i].target);
        }
    }
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
    if (!pg_rcu_section_orphaned(m, cpu))
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

void pg_mm_cpumask_set(struct pg_mm *mm, int cpu)
{
    uint64_t bit = (uint64_t)1 << cpu;
    if (!(pg_load_relaxed(&mm->cpumask) & bit))
        pg_fetch_or_seqcst(&mm->cpumask, bit);
    /* the bit before any entry read: pairs with the fence a shootdown
     * sender issues between clearing entries and reading the mask */
    pg_smp_mb();
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

int pg_tlb_probe(pg_machine *m, int cpu, uint64_t mmid, uint64_t addr)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (addr >= PG_VA_LIMIT)
        return -PG_EFAULT;
    struct pg_cpu *c = &m->cpus[cpu];
    uint64_t vpn = addr >> PG_PAGE_SHIFT;
    pg_spin_lock(&c->lock);
    struct pg_tlb_entry *te = pg_tlb_slot(c, vpn);
    int hit = te->mm_plus1 == mmid + 1 && te->vpn == vpn;
    pg_spin_unlock(&c->lock);
    return hit;
}
