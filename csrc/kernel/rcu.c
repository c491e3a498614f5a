/*
 * kernel/rcu.c - read-side sections, grace periods and call_rcu.
 *
 * Each CPU has a sequence word that is odd while it is inside a read-side
 * section (IRQs disabled or rcu_read_lock, counted together).  A grace
 * period since a snapshot has ended once every CPU that was odd in the
 * snapshot has moved on.  call_rcu callbacks are batched; a batch records
 * the snapshot when it is closed and runs once that snapshot is stale.
 */
#define _GNU_SOURCE /* syscall(), gettid / tgkill numbers */
#include <errno.h>
#include <string.h>

#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "kernel/sched.h"
#include "kernel/rcu.h"

void pg_rcu_init(pg_machine *m)
{
    pg_spin_init(&m->rcu.lock);
    m->rcu.open.head = NULL;
    m->rcu.open.tail = &m->rcu.open.head;
}

/* the calling OS thread's id, asked of the kernel once per thread */
static int32_t current_tid(void)
{
    static _Thread_local int32_t tid;
    if (!tid)
        tid = (int32_t)syscall(SYS_gettid);
    return tid;
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

bool pg_rcu_section_orphaned(pg_machine *m, int cpu)
{
    int32_t tid = pg_load_relaxed(&m->cpus[cpu].section_tid);
    return tid > 0 && !thread_exists(tid);
}

void pg_rcu_cpu_enter(pg_machine *m, int cpu)
{
    pg_store_relaxed(&m->cpus[cpu].section_tid, current_tid());
    pg_fetch_add_seqcst(&m->cpus[cpu].rcu_seq, 1);
    /* odd before any read inside the section: pairs with the fence before
     * a grace-period snapshot */
    pg_smp_mb();
}

void pg_rcu_cpu_exit(pg_machine *m, int cpu)
{
    /* seq_cst RMW: every read of the section is done before it is even */
    pg_fetch_add_seqcst(&m->cpus[cpu].rcu_seq, 1);
    pg_store_relaxed(&m->cpus[cpu].section_tid, 0);
}

int pg_rcu_read_lock(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    struct pg_cpu *c = &m->cpus[cpu];
    pg_spin_lock(&c->lock);
    if (c->rcu_nesting == 0 && pg_load_relaxed(&c->irq_nesting) == 0)
        pg_rcu_cpu_enter(m, cpu);
    c->rcu_nesting++;
    pg_spin_unlock(&c->lock);
    return 0;
}

int pg_rcu_read_unlock(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    struct pg_cpu *c = &m->cpus[cpu];
    pg_spin_lock(&c->lock);
    if (c->rcu_nesting == 0) {
        pg_spin_unlock(&c->lock);
        return -PG_EINVAL; /* unbalanced unlock */
    }
    c->rcu_nesting--;
    if (c->rcu_nesting == 0 && pg_load_relaxed(&c->irq_nesting) == 0)
        pg_rcu_cpu_exit(m, cpu);
    pg_spin_unlock(&c->lock);
    return 0;
}

static void snapshot(pg_machine *m, uint64_t *snap)
{
    pg_smp_mb(); /* the unpublish before the snapshot */
    for (int i = 0; i < m->nr_cpus; i++)
        snap[i] = pg_load_seqcst(&m->cpus[i].rcu_seq);
}

static bool gp_done(pg_machine *m, const uint64_t *snap)
{
    for (int i = 0; i < m->nr_cpus; i++)
        if ((snap[i] & 1) && pg_load_acquire(&m->cpus[i].rcu_seq) == snap[i])
            return false;
    return true;
}

static void wait_gp(pg_machine *m, int cpu)
{
    (void)cpu; /* the waiting CPU is the calling thread's */
    uint64_t snap[PG_MAX_CPUS];
    snapshot(m, snap);
    for (int i = 0; i < m->nr_cpus; i++) {
        unsigned spins = 0, polls = 0;
        if (!(snap[i] & 1))
            continue;
        while (pg_load_acquire(&m->cpus[i].rcu_seq) == snap[i]) {
            pg_cpu_wait(&spins, PG_W_RCU_GP_WAIT);
            /* a reader whose thread has ended reads nothing any more: its
             * CPU is quiescent, though its section was never closed (the
             * next IPI to it, or Python, closes it: pg_cpu_reap_orphan) */
            if (pg_orphan_poll_due(++polls) && pg_rcu_section_orphaned(m, i))
                break;
        }
    }
    pg_smp_mb(); /* the readers' sections before what the caller frees */
    pg_fetch_add_relaxed(&m->rcu_grace_periods, 1);
}

int pg_synchronize_rcu(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_cpu_in_rcu(m, cpu))
        return -PG_EBUSY; /* it would wait for itself */
    wait_gp(m, cpu);
    return 0;
}

void pg_call_rcu(pg_machine *m, struct pg_rcu_head *h, pg_rcu_fn fn)
{
    h->func = fn;
    h->next = NULL;
    pg_spin_lock(&m->rcu.lock);
    *m->rcu.open.tail = h;
    m->rcu.open.tail = &h->next;
    pg_spin_unlock(&m->rcu.lock);
}

static int run_callbacks(pg_machine *m, struct pg_rcu_head *h)
{
    int n = 0;
    while (h) {
        struct pg_rcu_head *next = h->next;
        PG_YIELD(m, -1, PG_W_RCU_BEFORE_CALLBACK);
        h->func(m, h);
        n++;
        h = next;
    }
    if (n)
        pg_fetch_add_relaxed(&m->rcu_callbacks_run, (uint64_t)n);
    return n;
}

int pg_rcu_poll(pg_machine *m)
{
    struct pg_rcu_state *r = &m->rcu;
    struct pg_rcu_head *run = NULL, **run_tail = &run;

    pg_spin_lock(&r->lock);
    /* close the open batch: its grace period starts now */
    if (r->open.head && r->count < PG_RCU_NBATCH) {
        struct pg_rcu_batch *b = &r->closed[(r->first + r->count) % PG_RCU_NBATCH];
        b->head = r->open.head;
        b->tail = r->open.tail;
        snapshot(m, b->snap);
        r->count++;
        r->open.head = NULL;
        r->open.tail = &r->open.head;
    }
    while (r->count && gp_done(m, r->closed[r->first].snap)) {
        struct pg_rcu_batch *b = &r->closed[r->first];
        *run_tail = b->head;
        run_tail = b->tail;
        b->head = NULL;
        r->first = (r->first + 1) % PG_RCU_NBATCH;
        r->count--;
        pg_fetch_add_relaxed(&m->rcu_grace_periods, 1);
    }
    pg_spin_unlock(&r->lock);
    /* callbacks take other locks (pool, records): run them unlocked */
    return run_callbacks(m, run);
}

int pg_rcu_barrier(pg_machine *m, int cpu)
{
    if (!pg_cpu_ok(m, cpu))
        return -PG_EINVAL;
    if (pg_cpu_in_rcu(m, cpu))
        return -PG_EBUSY;
    struct pg_rcu_state *r = &m->rcu;
    struct pg_rcu_head *run = NULL, **run_tail = &run;

    /* take everything queued so far, oldest first; one grace period that
     * starts after all of it was queued covers all of it */
    pg_spin_lock(&r->lock);
    while (r->count) {
        struct pg_rcu_batch *b = &r->closed[r->first];
        *run_tail = b->head;
        run_tail = b->tail;
        b->head = NULL;
        r->first = (r->first + 1) % PG_RCU_NBATCH;
        r->count--;
    }
    if (r->open.head) {
        *run_tail = r->open.head;
        run_tail = r->open.tail;
        r->open.head = NULL;
        r->open.tail = &r->open.head;
    }
    pg_spin_unlock(&r->lock);
    wait_gp(m, cpu);
    return run_callbacks(m, run);
}
