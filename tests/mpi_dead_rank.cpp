// A worker rank that dies (SIGKILL) in the middle of a job, for
// tests/mpi_dead_rank.sh. Rank 0 prints "warm-up answered by rank N", then
// waits for the killed job; OpenMPI's mpirun ends the whole job when a rank
// dies, so rank 0 never gets further (the script checks that the job ended
// instead of hanging, and how).
#include <hop/mpi.hpp>

#include <csignal>
#include <cstdio>

namespace {
int die_impl(int kill) {
    if (kill != 0) std::raise(SIGKILL);
    return hop::mpi::rank();
}
hop::mpi::function<int(int)> die{"die", &die_impl};
}  // namespace

int main(int argc, char** argv) {
    return hop::mpi::run(argc, argv, [](hop::mpi::executor& ex) {
        std::printf("warm-up answered by rank %d\n", ex.submit(die, 0).get());
        std::fflush(stdout);
        try {
            ex.submit(die, 1).get();
            std::printf("the killed job answered\n");
        } catch (const std::exception& e) {
            std::printf("the killed job failed: %s\n", e.what());
        }
        return 0;
    });
}
