/*
 * kernel/sched.h - the deterministic scheduler's hooks, seen from the rest
 * of the core: PG_YIELD at a race window, pg_cpu_wait for each step of a
 * wait on another CPU, and the spinlock whose wait is such a step.  The
 * points themselves are kernel/race.h's registry, below this.
 *
 * The thread-local machine is set only on a thread that runs as a CPU of a
 * deterministic-scheduler session; every spin-wait step of such a thread
 * hands the turn back (it cannot progress until another CPU acts).
 */
#ifndef PYGUP_KERNEL_SCHED_H
#define PYGUP_KERNEL_SCHED_H

#include "internal.h"
#include "kernel/race.h"

extern _Thread_local struct pg_machine *pg_sched_tls_machine;
/* park the calling CPU at registered point `window` (enum pg_race_window;
 * spin: it is waiting, not runnable) and return when the scheduler picks it
 * again; a no-op on a thread that is not a scheduled CPU of m, or a point
 * the session's filter leaves out */
void pg_sched_hook(struct pg_machine *m, int window, int spin);
void pg_sched_fini(pg_machine *m);

/* one step of a spin-wait on another CPU (IPI acknowledgement, grace
 * period, spinlock): a scheduling point in scheduled mode, else relax */
static inline void pg_cpu_wait(unsigned *spins, enum pg_race_window why)
{
    if (__builtin_expect(pg_sched_tls_machine != NULL, 0)) {
        pg_sched_hook(pg_sched_tls_machine, (int)why, 1);
        return;
    }
    if (++*spins >= 64) {
        *spins = 0;
        sched_yield();
    }
}

static inline void pg_cpu_relax(unsigned *spins)
{
    pg_cpu_wait(spins, PG_W_SPIN_LOCK);
}

static inline void pg_spin_lock(pg_spinlock *l)
{
    unsigned spins = 0;
    for (;;) {
        if (!atomic_exchange_explicit(&l->locked, 1, memory_order_acquire))
            return;
        while (pg_load_relaxed(&l->locked))
            pg_cpu_relax(&spins);
    }
}

static inline void pg_spin_unlock(pg_spinlock *l)
{
    pg_store_release(&l->locked, 0);
}

/* ---- race-window hook ---------------------------------------------------
 * PG_YIELD(m, cpu, PG_W_...) at every registered window (kernel/race.h)
 * where another CPU's step changes the outcome.  Outside scheduled mode and
 * stress runs it costs one predictable branch on a relaxed load (two at the
 * PG_RACE_AMP windows); in scheduled mode a scheduler step (sched.c),
 * taken by the calling thread's CPU ("cpu" is informative only and may be
 * -1 where the caller has no CPU).  The window must be an enum constant:
 * a misspelt one does not compile. */
#define PG_YIELD(m, cpu, window)                                              \
    ((void)(cpu), PG_RACE_AMPLIFY((m), window),                               \
     __builtin_expect(pg_load_relaxed(&(m)->sched_on), 0)                     \
         ? pg_sched_hook((m), (window), 0)                                    \
         : (void)0)

#endif /* PYGUP_KERNEL_SCHED_H */
