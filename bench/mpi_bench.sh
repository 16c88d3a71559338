#!/usr/bin/env bash
# hop::mpi against mpi4py.futures (Debian python3-mpi4py) on the same work,
# the same ranks (4: rank 0 submits, 3 serve, one job at a time each), in
# one run: hop with each progress mode in turn, PASSES times (thread, loop,
# thread, loop, ...: HOP_MPI_PROGRESS=thread is the default; =loop polls MPI
# from a task on an io_loop), then mpi4py once. Each program measures every
# figure in ROUNDS rounds; the table shows the median over all of a side's
# rounds with the lowest and highest, and the load average at the start and
# the end: on a shared machine other work moves these figures more than
# anything measured.
# Usage: bench/mpi_bench.sh [BUILD_DIR] [ROUNDS] [PASSES]   (default: build 5 2; needs bench/mpi_bench built)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
rounds=${2:-5}
passes=${3:-2}
ranks=4
mpirun=(mpirun --allow-run-as-root --oversubscribe -n "$ranks")
start_load=$(cut -d' ' -f1-3 /proc/loadavg)
thread_out="" loop_out=""
for ((p = 0; p < passes; ++p)); do
    for mode in thread loop; do
        out=$("${mpirun[@]}" -x HOP_MPI_THREADS=1 -x HOP_MPI_PROGRESS=$mode "$build/bench/mpi_bench" \
              --tiny 200000 --ms 600 --rounds "$rounds")
        # The CPU time of all the ranks together, for the whole run.
        out+=$'\n'$(awk '$1 == "rank_cpu_seconds" { s += $2 } END { printf "cpu_seconds_all_ranks %.2f", s }' <<<"$out")
        if [ "$mode" = thread ]; then thread_out+="$out"$'\n'; else loop_out+="$out"$'\n'; fi
    done
done
py_out=$("${mpirun[@]}" /usr/bin/python3 -m mpi4py.futures bench/mpi_bench.py --tiny 10000 --ms 600 --rounds "$rounds")
end_load=$(cut -d' ' -f1-3 /proc/loadavg)
# "median lowest highest" of every value after KEY on all of its lines.
stats() {
    awk -v k="$2" '$1 == k { for (i = 2; i <= NF; ++i) print $i }' <<<"$1" | sort -g |
        awk '{ v[++n] = $1 } END { if (n == 0) exit; m = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
                                   printf "%s %s %s\n", num(m), num(v[1]), num(v[n]) }
             function num(x) { return (x >= 1000 || x <= -1000) ? sprintf("%.0f", x) : sprintf("%.4g", x) }'
}
cell() { stats "$1" "$2" | awk '{ printf "%s (%s..%s)", $1, $2, $3 } END { if (NR == 0) printf "-" }'; }
median() { stats "$1" "$2" | awk '{ print $1 }'; }
echo "load average (1, 5, 15 min): at the start $start_load, at the end $end_load ($(nproc) cores)"
printf '%-24s %30s %30s %30s %8s\n' "$ranks ranks" "hop::mpi thread" "hop::mpi loop" "mpi4py" "ratio"
for key in tiny_submit_jobs_per_s tiny_map_items_per_s ms_seconds local_seconds ms_overhead_us_per_job \
           ms_efficiency_vs_local cpu_seconds_all_ranks; do
    h=$(median "$thread_out" "$key")
    p=$(median "$py_out" "$key")
    ratio=$(awk -v h="$h" -v p="$p" -v k="$key" 'BEGIN {
        if (k == "local_seconds" || k ~ /^cpu/) print "-"
        else if (k ~ /overhead|seconds/) { if (h > 0 && p > 0) printf "%.1fx", p / h; else print "-" }
        else if (p > 0) printf "%.1fx", h / p; else print "-" }')
    printf '%-24s %30s %30s %30s %8s\n' "$key" "$(cell "$thread_out" "$key")" "$(cell "$loop_out" "$key")" \
        "$(cell "$py_out" "$key")" "$ratio"
done
printf '(median over %s rounds x %s runs per hop mode, %s rounds of mpi4py; lowest..highest in brackets.\n' \
    "$rounds" "$passes" "$rounds"
printf ' ratio: how many times better hop (thread, the default) is than mpi4py. 1 ms jobs: overhead per job\n'
printf ' and efficiency against a local pool of as many threads, measured in pairs in the same program:\n'
printf ' hop a cpu_pool, mpi4py a ProcessPoolExecutor. A negative overhead: the local side was slower.\n'
printf ' ms_seconds / local_seconds: the two sides of those pairs (%s jobs of 1 ms); on a machine with\n' 600
printf ' fewer cores than threads the idle ranks still poll while the local pool runs, so compare the\n'
printf ' modes on ms_seconds, not on the efficiency alone.\n'
printf ' cpu_seconds_all_ranks: user+system CPU of the 4 ranks together over one whole run, the same work.)\n'
