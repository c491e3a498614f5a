/*
 * arch/cpu.h - emulated CPUs inside the core: TLB shootdown to the CPUs an
 * mm's cpumask names, the IPI sync, and the cpumask itself.  The arch layer
 * knows struct pg_mm only as a layout (internal.h): it reads its cpumask,
 * never looks an mm up (that is mm/'s job, above it).
 */
#ifndef PYGUP_ARCH_CPU_H
#define PYGUP_ARCH_CPU_H

#include "internal.h"

void pg_cpus_init(pg_machine *m);
/* flush_tlb_range to the CPUs in mm->cpumask (every CPU if all_cpus); the
 * caller checked cpu and that its IRQs are enabled (-PG_EBUSY otherwise) */
int pg_flush_tlb_mm_range(pg_machine *m, int cpu, struct pg_mm *mm,
                          uint64_t mmid, uint64_t start, uint64_t end,
                          bool all_cpus);
/* pg_ipi_sync_all for a caller that checked its arguments */
int pg_ipi_sync_internal(pg_machine *m, int cpu);
/* cpu has mm active from now on: shootdowns of mm reach it */
void pg_mm_cpumask_set(struct pg_mm *mm, int cpu);

/* end the IRQs-off / read-side section of a CPU whose thread has ended
 * (pg_rcu_section_orphaned), running the IPIs queued for it */
bool pg_cpu_reap_orphan(pg_machine *m, int cpu);

/* the TLB set a virtual page number lands in */
static inline struct pg_tlb_entry *pg_tlb_slot(struct pg_cpu *c, uint64_t vpn)
{
    return &c->tlb[vpn % PG_TLB_ENTRIES];
}

#endif /* PYGUP_ARCH_CPU_H */
