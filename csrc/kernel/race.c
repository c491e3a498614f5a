/*
 * kernel/race.c - the race-window registry's tables (names, reasons,
 * kinds: kernel/race.h's one list) and the stress amplifier's spin.
 */
#include <string.h>

#include "internal.h"
#include "kernel/race.h"

#define PG_RACE_NAME(id, name, flags, reason) [id] = name,
#define PG_RACE_REASON(id, name, flags, reason) [id] = reason,
#define PG_RACE_FLAGS(id, name, flags, reason) [id] = (flags),
static const char *const race_name[PG_NR_RACE_WINDOWS] = {PG_RACE_WINDOWS(PG_RACE_NAME)};
static const char *const race_reason[PG_NR_RACE_WINDOWS] = {PG_RACE_WINDOWS(PG_RACE_REASON)};
static const int race_flags[PG_NR_RACE_WINDOWS] = {PG_RACE_WINDOWS(PG_RACE_FLAGS)};

int pg_race_window_count(void)
{
    return PG_NR_RACE_WINDOWS;
}

const char *pg_race_window_name(int id)
{
    return id >= 0 && id < PG_NR_RACE_WINDOWS ? race_name[id] : NULL;
}

const char *pg_race_window_reason(int id)
{
    return id >= 0 && id < PG_NR_RACE_WINDOWS ? race_reason[id] : NULL;
}

int pg_race_window_flags(int id)
{
    return id >= 0 && id < PG_NR_RACE_WINDOWS ? race_flags[id] : -PG_EINVAL;
}

int pg_race_window_lookup(const char *name)
{
    if (!name)
        return -PG_EINVAL;
    for (int i = 0; i < PG_NR_RACE_WINDOWS; i++)
        if (strcmp(race_name[i], name) == 0)
            return i;
    return -PG_EINVAL;
}

/* ---- the stress amplifier ------------------------------------------------ */

static _Thread_local uint32_t amplify_spins;

void pg_race_amplifier_set(pg_machine *m, bool on)
{
    pg_store_release(&m->race_amplify, on ? 1u : 0u);
}

void pg_race_amplifier_thread(uint32_t spins)
{
    amplify_spins = spins;
}

void pg_race_amplify_spin(void)
{
    /* a compiler barrier per step keeps the loop from being folded away */
    for (uint32_t i = 0; i < amplify_spins; i++)
        __asm__ __volatile__("" ::: "memory");
}
