#!/usr/bin/env bash
# hop::mpi against mpi4py.futures (Debian python3-mpi4py) on the same work,
# the same ranks (4: rank 0 submits, 3 serve, one job at a time each), one
# run after the other. Prints both sides and the ratio.
# Usage: bench/mpi_bench.sh [BUILD_DIR]   (default: build; needs bench/mpi_bench built)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
ranks=4
mpirun=(mpirun --allow-run-as-root --oversubscribe -n "$ranks")
hop_out=$("${mpirun[@]}" -x HOP_MPI_THREADS=1 "$build/bench/mpi_bench" --tiny 200000 --ms 600)
py_out=$("${mpirun[@]}" /usr/bin/python3 -m mpi4py.futures bench/mpi_bench.py --tiny 20000 --ms 600)
get() { awk -v k="$2" '$1 == k { print $2 }' <<<"$1"; }
printf '%-32s %14s %14s %9s\n' "$ranks ranks ($(nproc) cores)" "hop::mpi" "mpi4py" "ratio"
for key in tiny_submit_jobs_per_s tiny_map_items_per_s ms_overhead_us_per_job ms_efficiency_vs_local; do
    h=$(get "$hop_out" "$key")
    p=$(get "$py_out" "$key")
    ratio=$(awk -v h="$h" -v p="$p" -v k="$key" 'BEGIN {
        if (k ~ /overhead/) { if (h > 0) printf "%.1fx", p / h; else print "-" }
        else if (p > 0) printf "%.1fx", h / p; else print "-" }')
    printf '%-32s %14s %14s %9s\n' "$key" "$h" "$p" "$ratio"
done
printf '(ratio: how many times better hop is. 1 ms jobs: overhead per job and efficiency against a local\n'
printf ' pool of as many threads on the same run: hop a cpu_pool, mpi4py a ProcessPoolExecutor.)\n'
