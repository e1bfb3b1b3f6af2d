#!/bin/bash
# Submit a whole MegaLMM run to SLURM: prepare -> one array task per chain -> predict/summarize.
#
#   configs/slurm/submit.sh CONFIG CHAINS [extra sbatch options...]
#   e.g. configs/slurm/submit.sh run.yaml 4 --account=myproj --partition=long
#
# Each job starts only when the previous one succeeded (--dependency=afterok). The extra
# options go to all three sbatch calls (put per-job resources in the .sbatch headers, or
# override them per job with SBATCH_* environment variables). Prints the three job ids.
# CHAINS should normally equal mcmc.chains in the config. See docs/hpc.md.

set -euo pipefail

usage() {
    echo "usage: $0 CONFIG CHAINS [extra sbatch options...]" >&2
    exit 2
}
[ $# -ge 2 ] || usage
CONFIG=$1
CHAINS=$2
shift 2
case $CHAINS in
''|*[!0-9]*) echo "submit.sh: CHAINS must be a whole number >= 1, got '$CHAINS'" >&2; exit 2 ;;
esac
if [ "$CHAINS" -lt 1 ]; then
    echo "submit.sh: CHAINS must be >= 1, got $CHAINS" >&2
    exit 2
fi
if [ ! -f "$CONFIG" ]; then
    echo "submit.sh: $CONFIG: no such file" >&2
    exit 2
fi
# Absolute path: jobs may start in another directory.
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

submit() {  # sbatch --parsable ... ; prints the job id (without a ";cluster" suffix)
    local out
    out=$(sbatch --parsable "$@") || { echo "submit.sh: sbatch $* failed" >&2; exit 1; }
    out=${out%%;*}
    case $out in
    ''|*[!0-9]*) echo "submit.sh: sbatch printed '$out', not a job id" >&2; exit 1 ;;
    esac
    echo "$out"
}

prep=$(submit "$@" "$HERE/prepare.sbatch" "$CONFIG")
echo "prepare: job $prep"
array=$(submit "$@" --array="1-$CHAINS" --dependency="afterok:$prep" \
        "$HERE/sample_array.sbatch" "$CONFIG")
echo "sample:  array job $array (chains 1-$CHAINS)"
post=$(submit "$@" --dependency="afterok:$array" "$HERE/post.sbatch" "$CONFIG")
echo "post:    job $post (predict + summarize)"
echo "watch with: squeue -j $prep,$array,$post   and   megalmm status $CONFIG"
