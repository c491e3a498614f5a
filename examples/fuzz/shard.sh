#!/bin/sh
# One shard of a sharded pygup fuzz campaign; the scheduler says which.
#   Kubernetes Indexed Job: JOB_COMPLETION_INDEX (0..completions-1)
#   Slurm job array:         SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT
# Shard I of N writes OUT/shard-I/ (reproducers named by content, corpus,
# summary.json); collect with:  pygup fuzz merge OUT/shard-*
# Exit status: pygup fuzz's (0 clean, 1 violation, 2 usage, 3 internal).
set -eu
I="${JOB_COMPLETION_INDEX:-${SLURM_ARRAY_TASK_ID:-0}}"
N="${PYGUP_SHARDS:-${SLURM_ARRAY_TASK_COUNT:-1}}"
OUT="${PYGUP_FUZZ_OUT:-/out}"
mkdir -p "$OUT/shard-$I"
exec pygup fuzz --shard "$I/$N" \
    --seconds "${PYGUP_FUZZ_SECONDS:-3600}" \
    ${PYGUP_FUZZ_MAX_OPS:+--max-ops "$PYGUP_FUZZ_MAX_OPS"} \
    --policy "${PYGUP_FUZZ_POLICY:-6.5}" \
    --workers "${PYGUP_FUZZ_WORKERS:-$(nproc)}" \
    --seed "${PYGUP_FUZZ_SEED:-0}" \
    --keep-going \
    --out-dir "$OUT/shard-$I" \
    --corpus "$OUT/shard-$I/corpus" \
    --json "$OUT/shard-$I/summary.json"
