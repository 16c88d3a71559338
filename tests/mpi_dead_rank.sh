#!/usr/bin/env bash
# A worker rank killed by SIGKILL mid-job: OpenMPI 4.1's mpirun notices and
# ends the whole job (rank 0 included) with the signal's exit status, so the
# program does not hang. (hop cannot fail the futures itself here: rank 0 is
# killed with the job; under mpirun --enable-recovery the job goes on but
# OpenMPI 4.1 reports no error to the other ranks, see the README.)
# Usage: mpi_dead_rank.sh MPIRUN PROGRAM
set -uo pipefail
mpirun=$1
prog=$2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$mpirun" --allow-run-as-root --oversubscribe -n 3 "$prog" >"$out" 2>&1
status=$?
cat "$out"
grep -q '^warm-up answered by rank [12]$' "$out" || { echo "FAIL: the cluster did not start"; exit 1; }
grep -q 'the killed job' "$out" && { echo "FAIL: rank 0 went on after a rank died"; exit 1; }
[ "$status" -ne 0 ] || { echo "FAIL: mpirun exited 0 after a rank died"; exit 1; }
grep -q 'exited on signal 9' "$out" || { echo "FAIL: mpirun did not name the killed rank's signal"; exit 1; }
echo "ok: mpirun ended the job (status $status) when a rank died"
