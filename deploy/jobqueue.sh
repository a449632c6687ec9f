#!/bin/bash
# Run a gridflow pipeline whose Dask workers are batch jobs, submitted by
# dask-jobqueue and scaled to N jobs. The pipeline itself (and the Dask
# scheduler) runs where this script runs: a login node, or better a small
# long-running batch job of its own:
#
#   deploy/jobqueue.sh 8                      # 8 SLURM jobs of workers
#   deploy/jobqueue.sh 4 pbs big.yaml         # 4 PBS jobs, another pipeline
#   sbatch -c 2 --mem=8G -t 04:00:00 deploy/jobqueue.sh 8
#
# Job sizes (cores, memory, processes, walltime), the account and the
# queue/partition come from deploy/jobqueue.yaml: copy it to
# ~/.config/dask/jobqueue.yaml and edit it (or set DASK_CONFIG to its folder).
# Worker jobs start as the queue allows; the run begins with the first and
# uses every worker that joins. Rerunning the same command continues an
# interrupted run (--resume).
set -euo pipefail

JOBS=${1:?usage: deploy/jobqueue.sh N [slurm|pbs] [PIPELINE.yaml]}
SCHEDULER=${2:-slurm}
PIPELINE=${3:-examples/pipeline.yaml}

# <- edit: the virtualenv with gridflow[hpc] (the worker jobs use its python)
GRIDFLOW_VENV=${GRIDFLOW_VENV:-$HOME/gridflow-venv}
if [ -f "$GRIDFLOW_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$GRIDFLOW_VENV/bin/activate"
fi

# Check the generated worker job script first, then run.
gridflow --scheduler "$SCHEDULER" --jobs "$JOBS" run --check "$PIPELINE"
exec gridflow --scheduler "$SCHEDULER" --jobs "$JOBS" run "$PIPELINE" --resume
