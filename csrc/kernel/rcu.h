/*
 * kernel/rcu.h - RCU inside the core: call_rcu, and the read-side entry /
 * exit that arch/cpu.c drives when a CPU's combined (IRQs-off +
 * rcu_read_lock) depth crosses 0.  The exported calls are in pygup.h.
 */
#ifndef PYGUP_KERNEL_RCU_H
#define PYGUP_KERNEL_RCU_H

#include "internal.h"

void pg_rcu_init(pg_machine *m);
void pg_call_rcu(pg_machine *m, struct pg_rcu_head *h, pg_rcu_fn fn);
/* with the cpu lock held */
void pg_rcu_cpu_enter(pg_machine *m, int cpu);
void pg_rcu_cpu_exit(pg_machine *m, int cpu);
/* every this many steps of a wait on another CPU, the waiter checks that
 * CPU's section owner still exists (one cheap system call); before that,
 * at 64, 128, ... steps, so that a section whose thread ended (the fuzz
 * harness's orphan_section, a caller's thread that died) is found in tens
 * of microseconds, not the hundreds that 4096 steps of sched_yield take */
#define PG_ORPHAN_POLL 4096
#define PG_ORPHAN_POLL_FIRST 64
static inline bool pg_orphan_poll_due(unsigned polls)
{
    if (polls >= PG_ORPHAN_POLL)
        return polls % PG_ORPHAN_POLL == 0;
    return polls >= PG_ORPHAN_POLL_FIRST && (polls & (polls - 1)) == 0;
}
/* Was cpu's current read-side / IRQs-off section opened by an OS thread
 * that no longer exists?  Such a section can never end by itself. */
bool pg_rcu_section_orphaned(pg_machine *m, int cpu);

#endif /* PYGUP_KERNEL_RCU_H */
