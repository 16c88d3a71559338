# mpi4py.futures on the work of bench/mpi_bench.cpp, for bench/mpi_bench.sh:
#   mpirun -n 4 /usr/bin/python3 -m mpi4py.futures bench/mpi_bench.py [--tiny N] [--ms M]
# Rank 0 runs this script; the other ranks serve (MPIPoolExecutor's
# command-line mode). The 1 ms jobs also run on a local ProcessPoolExecutor
# with as many processes, as hop's run on a local cpu_pool. R rounds of
# each, every round's figure printed (the script takes the median, as for
# bench/mpi_bench.cpp). Prints "key value..." lines.
import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

from mpi4py import MPI
from mpi4py.futures import MPIPoolExecutor


def inc(x):
    return x + 1


def spin_1ms(x):
    end = time.thread_time() + 0.001
    while time.thread_time() < end:
        pass
    return x


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tiny", type=int, default=20000)
    p.add_argument("--ms", type=int, default=600)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    load_before = os.getloadavg()[0]
    with MPIPoolExecutor() as ex:
        workers = MPI.COMM_WORLD.Get_size() - 1
        for f in [ex.submit(inc, i) for i in range(1000)]:  # warm-up
            f.result()
        submit_rate, map_rate = [], []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            fs = [ex.submit(inc, i) for i in range(a.tiny)]
            total = sum(f.result() for f in fs)
            submit_rate.append(a.tiny / (time.perf_counter() - t0))
            assert total == a.tiny * (a.tiny + 1) // 2
            t0 = time.perf_counter()
            out = list(ex.map(inc, range(a.tiny), chunksize=max(1, a.tiny // (workers * 8))))
            map_rate.append(a.tiny / (time.perf_counter() - t0))
            assert out[-1] == a.tiny
        # Cluster and local process pool in turn, R pairs (as
        # bench/mpi_bench.cpp). The local reference is a process pool with
        # as many workers: Python's threads would serialise on the GIL.
        ms_s, local_s, overhead, efficiency = [], [], [], []
        with ProcessPoolExecutor(max_workers=workers) as local:
            for f in [local.submit(inc, i) for i in range(100)]:  # start the processes
                f.result()
            for _ in range(a.rounds):
                t0 = time.perf_counter()
                for f in [ex.submit(spin_1ms, i) for i in range(a.ms)]:
                    f.result()
                c = time.perf_counter() - t0
                t0 = time.perf_counter()
                for f in [local.submit(spin_1ms, i) for i in range(a.ms)]:
                    f.result()
                loc = time.perf_counter() - t0
                ms_s.append(c)
                local_s.append(loc)
                overhead.append((c - loc) * workers / a.ms * 1e6)
                efficiency.append(loc / c)

    def rounds(key, v, fmt):
        print(key, " ".join(fmt.format(x) for x in v))

    print(f"ranks {workers}")
    print(f"rounds {a.rounds}")
    print(f"tiny_jobs {a.tiny}")
    rounds("tiny_submit_jobs_per_s", submit_rate, "{:.0f}")
    rounds("tiny_map_items_per_s", map_rate, "{:.0f}")
    print(f"ms_jobs {a.ms}")
    rounds("ms_seconds", ms_s, "{:.4f}")
    rounds("local_seconds", local_s, "{:.4f}")
    rounds("ms_overhead_us_per_job", overhead, "{:.1f}")
    rounds("ms_efficiency_vs_local", efficiency, "{:.3f}")
    print(f"load_before {load_before:.2f}")
    print(f"load_after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
