/*
 * kernel/sched.c - deterministic interleavings: the scheduler behind PG_YIELD.
 *
 * A session (pg_sched_begin .. pg_sched_end) runs nr emulated CPUs, each an
 * OS thread that attached itself as CPU k, strictly one at a time.  The
 * turn is a baton: the running CPU keeps it until it reaches a scheduling
 * point, parks there (state POINT, or SPIN when it is waiting on another
 * CPU), picks the next CPU itself and sleeps until it is picked again.
 * There is no scheduler thread: every decision is taken, under the session
 * mutex, by the CPU that gives the turn away, so a run is a pure function
 * of (seed or schedule, the operations), whatever the OS does.  Each CPU
 * sleeps on a condition of its own and only the CPU picked is woken: a
 * pick that keeps the running CPU wakes nobody (with one shared condition
 * every pick woke every sleeper, a context switch each for nothing).
 *
 * Spin-waits yield too (pg_cpu_wait in kernel/sched.h: IPI acknowledgements,
 * grace periods, spinlocks; pg_sched_yield(spin) from Python for the
 * machine lock): a CPU that waits on a parked one hands the turn back, and
 * is picked only when no runnable CPU is left.  When every live CPU has only
 * spun for spin_limit consecutive picks, nothing can change any more: the
 * session is marked deadlocked and everyone stays parked (there is nothing
 * safe to resume), which Python reports instead of hanging.
 *
 * Points are small ids: the race-window registry's (kernel/race.h), then
 * the free names Python yields at, interned per session, so the trace
 * stores ids and the filter accepts only registered names.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernel/race.h"
#include "kernel/sched.h"

_Thread_local struct pg_machine *pg_sched_tls_machine;
static _Thread_local int tls_cpu = -1;

enum { CS_ABSENT, CS_READY, CS_POINT, CS_SPIN, CS_RUNNING, CS_DONE };

#define SCHED_MAX_NAMES 256
#define SCHED_TRACE_MAX ((int64_t)1 << 22)
#define SCHED_SPIN_LIMIT_DEFAULT 100000

struct sched_step {
    int16_t cpu;
    uint8_t spun;
    uint8_t pad;
    uint16_t name;
    uint64_t runnable; /* the CPUs that could have been picked (explorer) */
    uint64_t digest;   /* the machine's state digest at the pick, 0 if off */
    struct pg_sched_watch watch; /* the watched address, at the pick */
};

struct pg_sched {
    pg_machine *m;
    pthread_mutex_t lock;
    pthread_cond_t cond[PG_MAX_CPUS]; /* cond[k]: CPU k's turn came */
    int nr, attached, detached;
    int turn; /* the CPU that may run; -1: none */
    int last; /* the last CPU picked */
    int state[PG_MAX_CPUS];
    uint16_t where[PG_MAX_CPUS]; /* name id of the point each CPU parks at */
    uint64_t rng;
    int32_t *plan;
    int64_t plan_len, plan_pos;
    uint64_t spin_run, spin_limit;
    bool deadlock, truncated, filter_on, digest_on, watch_on;
    uint64_t watch_mm, watch_addr, watch_pfn; /* pfn: the last one mapped there */
    uint64_t py_epoch; /* machine-lock takes and drops of scheduled CPUs */
    struct sched_step *trace;
    int64_t trace_len, trace_cap;
    /* ids below PG_NR_RACE_WINDOWS are the registry's (kernel/race.h);
     * Python's free names are interned after them */
    int nr_names;
    char *name[SCHED_MAX_NAMES];    /* owned copies, from PG_NR_RACE_WINDOWS on */
    bool is_point[SCHED_MAX_NAMES]; /* in the filter */
};

/* splitmix64: tiny, seedable, good enough to spread picks */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* under s->lock; the id of a Python-level point name: its registry id if
 * it is registered, else interned on first sight (copied: names from
 * Python live in reused buffers); 0 ("start") when the table is full */
static uint16_t intern(struct pg_sched *s, const char *name)
{
    int id = pg_race_window_lookup(name);
    if (id >= 0)
        return (uint16_t)id;
    for (int i = PG_NR_RACE_WINDOWS; i < s->nr_names; i++)
        if (strcmp(s->name[i], name) == 0)
            return (uint16_t)i;
    if (s->nr_names == SCHED_MAX_NAMES)
        return 0;
    size_t n = 0;
    while (n < PG_SCHED_NAME_MAX - 1 && name[n])
        n++;
    char *copy = malloc(n + 1);
    if (!copy)
        return 0;
    memcpy(copy, name, n);
    copy[n] = '\0';
    int i = s->nr_names++;
    s->name[i] = copy;
    s->is_point[i] = false;
    return (uint16_t)i;
}

static bool waiting(int st)
{
    return st == CS_READY || st == CS_POINT || st == CS_SPIN;
}

/* FNV-1a over 64-bit words: deterministic, cheap, good enough to tell
 * states apart (a collision only prunes one branch of the explorer) */
static inline uint64_t mix(uint64_t h, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8)
        h = (h ^ (v & 0xff)) * 0x100000001b3ULL;
    return h;
}

static void trace_add(struct pg_sched *s, int cpu, bool spun, uint64_t runnable)
{
    if (s->trace_len == s->trace_cap) {
        int64_t cap = s->trace_cap ? s->trace_cap * 2 : 256;
        struct sched_step *t = cap <= SCHED_TRACE_MAX
                                   ? realloc(s->trace, (size_t)cap * sizeof(*t))
                                   : NULL;
        if (!t) {
            s->truncated = true;
            return;
        }
        s->trace = t;
        s->trace_cap = cap;
    }
    s->trace[s->trace_len++] = (struct sched_step){
        .cpu = (int16_t)cpu, .spun = spun, .name = s->where[cpu],
        .runnable = runnable};
    struct sched_step *st = &s->trace[s->trace_len - 1];
    if (s->digest_on) {
        /* the machine, the Python model's lock traffic and where every CPU
         * stands: two picks with equal digests face the same choice */
        uint64_t h = mix(s->m->sched_digest ? s->m->sched_digest(s->m) : 0, s->py_epoch);
        for (int c = 0; c < s->nr; c++)
            h = mix(h, ((uint64_t)s->state[c] << 16) | s->where[c]);
        st->digest = h ? h : 1;
    }
    if (s->watch_on && s->m->sched_observe)
        s->m->sched_observe(s->m, s->watch_mm, s->watch_addr, &s->watch_pfn, &st->watch);
}

/* Under s->lock: choose who runs next and hand it the turn.  The caller
 * has already parked (or finished) itself. */
static void pick_next(struct pg_sched *s)
{
    int live = 0, runnable = 0;
    uint64_t mask = 0; /* the alternatives: spinning CPUs are none */
    for (int c = 0; c < s->nr; c++) {
        if (!waiting(s->state[c]))
            continue;
        live++;
        if (s->state[c] != CS_SPIN) {
            runnable++;
            mask |= (uint64_t)1 << c;
        }
    }
    s->turn = -1;
    if (!live || s->deadlock)
        return;
    int pick = -1;
    while (s->plan && s->plan_pos < s->plan_len) {
        int want = s->plan[s->plan_pos++];
        if (want >= 0 && want < s->nr && waiting(s->state[want])) {
            pick = want;
            break;
        }
    }
    if (pick < 0 && runnable) {
        if (s->plan) {
            /* a written schedule's tail: run the last CPU on, then the
             * lowest runnable one */
            if (s->last >= 0 && waiting(s->state[s->last]) && s->state[s->last] != CS_SPIN)
                pick = s->last;
            for (int c = 0; pick < 0 && c < s->nr; c++)
                if (waiting(s->state[c]) && s->state[c] != CS_SPIN)
                    pick = c;
        } else {
            int k = (int)(rng_next(&s->rng) % (uint64_t)runnable);
            for (int c = 0; c < s->nr; c++) {
                if (!waiting(s->state[c]) || s->state[c] == CS_SPIN)
                    continue;
                if (k-- == 0) {
                    pick = c;
                    break;
                }
            }
        }
    }
    if (pick < 0) {
        /* everyone spins: let each re-check in turn, round robin */
        for (int i = 1; i <= s->nr && pick < 0; i++) {
            int c = (s->last + i + s->nr) % s->nr;
            if (waiting(s->state[c]))
                pick = c;
        }
    }
    if (s->state[pick] == CS_SPIN && !runnable) {
        if (++s->spin_run > s->spin_limit) {
            s->deadlock = true;
            return;
        }
    } else if (s->state[pick] != CS_SPIN) {
        s->spin_run = 0;
    }
    trace_add(s, pick, s->state[pick] == CS_SPIN, mask);
    s->last = pick;
    s->turn = pick;
}

/* under s->lock: sleep until picked; then running */
static void wait_turn(struct pg_sched *s, int me)
{
    while (s->turn != me)
        pthread_cond_wait(&s->cond[me], &s->lock);
    s->state[me] = CS_RUNNING;
}

/* under s->lock, after pick_next(): wake the CPU picked, unless it is the
 * caller (running already) or nobody was (deadlock, all done) */
static void wake_turn(struct pg_sched *s, int me)
{
    if (s->turn >= 0 && s->turn != me)
        pthread_cond_signal(&s->cond[s->turn]);
}

/* under s->lock */
static const char *point_name(struct pg_sched *s, int id)
{
    return id < PG_NR_RACE_WINDOWS ? pg_race_window_name(id) : s->name[id];
}

/* park at registry point id, or at Python's point name when it is not NULL */
static void hook(struct pg_sched *s, int id, const char *name, int spin)
{
    int me = tls_cpu;
    pthread_mutex_lock(&s->lock);
    if (name)
        id = intern(s, name);
    if (!spin && s->filter_on && !s->is_point[id]) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    s->state[me] = spin ? CS_SPIN : CS_POINT;
    s->where[me] = (uint16_t)id;
    pick_next(s);
    wake_turn(s, me);
    wait_turn(s, me);
    pthread_mutex_unlock(&s->lock);
}

void pg_sched_hook(pg_machine *m, int window, int spin)
{
    if (pg_sched_tls_machine != m)
        return; /* not a CPU of this machine's session */
    if (window < 0 || window >= PG_NR_RACE_WINDOWS)
        window = PG_W_START; /* unreachable: every caller passes an enum */
    hook(m->sched, window, NULL, spin);
}

int pg_sched_begin(pg_machine *m, int nr, uint64_t seed, const int32_t *schedule,
                   int64_t len, uint64_t spin_limit)
{
    if (nr < 1 || nr > m->nr_cpus || (schedule && len < 0) ||
        len > SCHED_TRACE_MAX)
        return -PG_EINVAL;
    if (m->sched)
        return -PG_EBUSY;
    struct pg_sched *s = calloc(1, sizeof(*s));
    if (!s)
        return -PG_ENOMEM;
    if (schedule) {
        s->plan = malloc((size_t)(len ? len : 1) * sizeof(*s->plan));
        if (!s->plan) {
            free(s);
            return -PG_ENOMEM;
        }
        if (len)
            memcpy(s->plan, schedule, (size_t)len * sizeof(*s->plan));
        s->plan_len = len;
    }
    pthread_mutex_init(&s->lock, NULL);
    for (int k = 0; k < nr; k++)
        pthread_cond_init(&s->cond[k], NULL);
    s->m = m;
    s->nr = nr;
    s->turn = -1;
    s->last = -1;
    s->rng = seed;
    s->spin_limit = spin_limit ? spin_limit : SCHED_SPIN_LIMIT_DEFAULT;
    s->nr_names = PG_NR_RACE_WINDOWS; /* id 0 is "start" */
    m->sched = s;
    /* the session before the flag: a thread that attaches synchronises on
     * the session mutex anyway; unattached threads never look further */
    pg_store_release(&m->sched_on, 1);
    return 0;
}

int pg_sched_filter(pg_machine *m, const char *name)
{
    struct pg_sched *s = m->sched;
    if (!s || !name || !*name)
        return -PG_EINVAL;
    /* only registered points: a misspelt name would never stop */
    int id = pg_race_window_lookup(name);
    if (id < 0)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int rc = -PG_EBUSY;
    if (s->attached == 0) {
        s->is_point[id] = true;
        s->filter_on = true;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int pg_sched_attach(pg_machine *m, int cpu)
{
    struct pg_sched *s = m->sched;
    if (!s || pg_sched_tls_machine)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    if (cpu < 0 || cpu >= s->nr || s->state[cpu] != CS_ABSENT) {
        pthread_mutex_unlock(&s->lock);
        return cpu < 0 || cpu >= s->nr ? -PG_EINVAL : -PG_EBUSY;
    }
    s->state[cpu] = CS_READY;
    s->where[cpu] = 0; /* "start" */
    pg_sched_tls_machine = m;
    tls_cpu = cpu;
    if (++s->attached == s->nr) {
        pick_next(s);
        wake_turn(s, cpu);
    }
    wait_turn(s, cpu);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int pg_sched_detach(pg_machine *m)
{
    struct pg_sched *s = m->sched;
    if (!s || pg_sched_tls_machine != m)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    s->state[tls_cpu] = CS_DONE;
    s->detached++;
    int me = tls_cpu;
    pg_sched_tls_machine = NULL;
    tls_cpu = -1;
    pick_next(s);
    wake_turn(s, me);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int pg_sched_yield(pg_machine *m, const char *name, int spin)
{
    if (!name || pg_sched_tls_machine != m)
        return 0;
    hook(m->sched, 0, name, spin != 0);
    return 1;
}

int pg_sched_status(pg_machine *m)
{
    struct pg_sched *s = m->sched;
    if (!s)
        return 0;
    pthread_mutex_lock(&s->lock);
    int st = PG_SCHED_ACTIVE;
    if (s->detached == s->nr)
        st |= PG_SCHED_DONE;
    if (s->deadlock)
        st |= PG_SCHED_DEADLOCK;
    if (s->truncated)
        st |= PG_SCHED_TRUNCATED;
    pthread_mutex_unlock(&s->lock);
    return st;
}

int64_t pg_sched_steps(pg_machine *m)
{
    struct pg_sched *s = m->sched;
    if (!s)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int64_t n = s->trace_len;
    pthread_mutex_unlock(&s->lock);
    return n;
}

int pg_sched_trace(pg_machine *m, int64_t i, int32_t *cpu, int32_t *spun,
                   char *name, int namelen)
{
    struct pg_sched *s = m->sched;
    if (!s || !cpu || !spun || !name || namelen <= 0)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int rc = -PG_EINVAL;
    if (i >= 0 && i < s->trace_len) {
        struct sched_step st = s->trace[i];
        *cpu = st.cpu;
        *spun = st.spun;
        const char *pn = point_name(s, st.name);
        size_t n = strlen(pn);
        if (n >= (size_t)namelen)
            n = (size_t)namelen - 1;
        memcpy(name, pn, n);
        name[n] = '\0';
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int pg_sched_explore(pg_machine *m)
{
    struct pg_sched *s = m->sched;
    if (!s)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int rc = s->attached == 0 ? 0 : -PG_EBUSY;
    if (rc == 0)
        s->digest_on = true;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int pg_sched_watch(pg_machine *m, uint64_t mmid, uint64_t addr)
{
    struct pg_sched *s = m->sched;
    if (!s || addr >= PG_VA_LIMIT)
        return -PG_EINVAL; /* the mm id is the observer's to check: a stale one reads nothing */
    pthread_mutex_lock(&s->lock);
    int rc = s->attached == 0 ? 0 : -PG_EBUSY;
    if (rc == 0) {
        s->watch_on = true;
        s->watch_mm = mmid;
        s->watch_addr = addr;
        s->watch_pfn = UINT64_MAX;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int pg_sched_trace_watch(pg_machine *m, int64_t i, uint64_t *out)
{
    struct pg_sched *s = m->sched;
    if (!s || !out)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int rc = -PG_EINVAL;
    if (i >= 0 && i < s->trace_len && s->watch_on) {
        struct pg_sched_watch *w = &s->trace[i].watch;
        out[0] = w->pte;
        out[1] = w->pfn;
        out[2] = (uint64_t)(int64_t)w->ref;
        out[3] = (uint64_t)(int64_t)w->pin;
        out[4] = (uint64_t)(int64_t)w->map;
        out[5] = w->mapping;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

void pg_sched_note_model(pg_machine *m)
{
    if (pg_sched_tls_machine != m)
        return; /* not a CPU of this machine's session: m->sched is not ours to read */
    struct pg_sched *s = m->sched;
    pthread_mutex_lock(&s->lock);
    s->py_epoch++;
    pthread_mutex_unlock(&s->lock);
}

int pg_sched_trace_choice(pg_machine *m, int64_t i, uint64_t *runnable, uint64_t *digest)
{
    struct pg_sched *s = m->sched;
    if (!s || !runnable || !digest)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    int rc = -PG_EINVAL;
    if (i >= 0 && i < s->trace_len) {
        *runnable = s->trace[i].runnable;
        *digest = s->trace[i].digest;
        rc = 0;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

static void sched_free(struct pg_sched *s)
{
    for (int i = PG_NR_RACE_WINDOWS; i < s->nr_names; i++)
        free(s->name[i]);
    free(s->trace);
    free(s->plan);
    for (int k = 0; k < s->nr; k++)
        pthread_cond_destroy(&s->cond[k]);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int pg_sched_end(pg_machine *m)
{
    struct pg_sched *s = m->sched;
    if (!s)
        return -PG_EINVAL;
    pthread_mutex_lock(&s->lock);
    bool busy = s->attached != s->detached || s->deadlock;
    pthread_mutex_unlock(&s->lock);
    if (busy)
        return -PG_EBUSY;
    pg_store_release(&m->sched_on, 0);
    m->sched = NULL;
    sched_free(s);
    return 0;
}

/* machine teardown: a session nobody ended (no CPU can be attached: the
 * Python side keeps a deadlocked machine alive forever) */
void pg_sched_fini(pg_machine *m)
{
    if (m->sched) {
        sched_free(m->sched);
        m->sched = NULL;
    }
}
