#!/bin/bash
# A sharded pygup fuzz campaign as a Slurm job array, then the merge as a
# dependent job:
#   jid=$(sbatch --parsable examples/fuzz/slurm-array.sh)
#   sbatch --dependency=afterany:$jid --wrap 'pygup fuzz merge out/shard-* --json out/merged.json'
# Slurm sends SIGTERM at the time limit (--signal gives warning time): the
# workers stop and the summary is written.
#SBATCH --job-name=pygup-fuzz
#SBATCH --array=0-7
#SBATCH --cpus-per-task=4
#SBATCH --time=01:10:00
#SBATCH --signal=TERM@120
#SBATCH --output=out/slurm-%A_%a.log
export PYGUP_FUZZ_OUT="${PYGUP_FUZZ_OUT:-out}"
export PYGUP_FUZZ_WORKERS="${SLURM_CPUS_PER_TASK:-4}"
# sbatch runs a copy of this script: find shard.sh from the submit directory
exec "${SLURM_SUBMIT_DIR:-.}/examples/fuzz/shard.sh"
