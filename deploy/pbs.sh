#!/bin/bash
# Run a gridflow pipeline as one PBS Pro / OpenPBS batch job, with dask-mpi:
# rank 0 is the Dask scheduler, rank 1 runs the pipeline, every other rank
# is a worker. Submit from the directory the pipeline's relative paths
# start from:
#
#   qsub deploy/pbs.sh
#   qsub -v PIPELINE=$HOME/runs/big.yaml deploy/pbs.sh
#
# Edit the three marked lines (account, queue, paths); the sizes below give
# 8 workers of 4 threads and 16 GB each on 2 nodes (deploy/README.md
# explains the arithmetic). The job always runs with --resume, so a rerun
# (qrerun, or the same qsub again) continues where it stopped.
#
#PBS -N gridflow
#PBS -A YOUR_ACCOUNT                                 # <- edit: your account
#PBS -q YOUR_QUEUE                                   # <- edit: a queue
#PBS -l select=2:ncpus=20:mpiprocs=5:mem=80gb        # 2 nodes x 5 ranks of 4 cores, 16 GB
#PBS -l walltime=02:00:00
#PBS -r y
#PBS -j oe

set -euo pipefail
cd "${PBS_O_WORKDIR:-$PWD}"

# <- edit: paths (or pass them with qsub -v NAME=value)
GRIDFLOW_VENV=${GRIDFLOW_VENV:-$HOME/gridflow-venv}      # has: pip install 'gridflow[hpc]'
PIPELINE=${PIPELINE:-$PWD/examples/pipeline.yaml}
WORKDIR=${WORKDIR:-$PWD}                                  # relative paths start here

THREADS=${THREADS:-4}                                     # ncpus / mpiprocs
MEMORY=${MEMORY:-16GB}                                    # mem / mpiprocs
NRANKS=$(wc -l <"$PBS_NODEFILE")                          # one line per mpiproc

if [ -f "$GRIDFLOW_VENV/bin/activate" ]; then
    # shellcheck disable=SC1091
    source "$GRIDFLOW_VENV/bin/activate"
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# mpiexec from the mpich wheel reads the host list from $PBS_NODEFILE; with a
# site MPI use its own mpiexec (module load ...; mpi4py built against it).
LAUNCHER=${LAUNCHER:-mpiexec -n $NRANKS -f $PBS_NODEFILE}

echo "gridflow: $NRANKS ranks, $((NRANKS - 2)) workers of $THREADS threads and $MEMORY;" \
     "pipeline $PIPELINE"

# shellcheck disable=SC2086
$LAUNCHER gridflow --scheduler mpi --threads "$THREADS" --memory-limit "$MEMORY" \
    run "$PIPELINE" --workdir "$WORKDIR" --resume
