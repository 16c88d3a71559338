// A program with its own poll(2) loop drives hop through native_handle():
// wait until the fd is readable (or your own fds are), then loop.poll().
//
// Here the host also watches a pipe that a thread writes to; hop runs a
// task that sleeps and does work on the CPU pool. Neither blocks the other.

#include <hop/hop.hpp>

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

using namespace std::chrono_literals;

namespace {

hop::task<int> hop_side(hop::cpu_pool& pool) {
    int done = 0;
    for (int i = 0; i < 3; ++i) {
        co_await hop::sleep_for(10ms);
        done += co_await pool.submit([i] { return i + 1; });
        std::printf("  hop: step %d\n", i);
    }
    co_return done;
}

}  // namespace

int main(int argc, char** argv) {
    hop::io_loop_options opts;
    if (argc > 1 && std::strcmp(argv[1], "epoll") == 0) opts.backend = hop::backend::epoll;
    if (argc > 1 && std::strcmp(argv[1], "io_uring") == 0) opts.backend = hop::backend::io_uring;
    hop::io_loop loop{opts};
    hop::cpu_pool pool{2};

    int pipefd[2];
    if (::pipe(pipefd) != 0) return 1;
    std::thread writer([w = pipefd[1]] {
        for (int i = 0; i < 3; ++i) {
            std::this_thread::sleep_for(7ms);  // an outside event source, not synchronisation
            (void)::write(w, "x", 1);
        }
        ::close(w);
    });

    auto result = loop.spawn(hop_side(pool));
    const int hop_fd = loop.native_handle();
    std::printf("poll_embed: backend %s, hop fd %d\n", std::string(loop.backend_name()).c_str(), hop_fd);

    int pipe_events = 0;
    bool pipe_open = true;
    while (!result.done() || pipe_open) {
        pollfd fds[2] = {{hop_fd, POLLIN, 0}, {pipe_open ? pipefd[0] : -1, POLLIN, 0}};
        if (::poll(fds, 2, 1000) < 0) return 1;
        if (fds[1].revents) {
            char c;
            if (::read(pipefd[0], &c, 1) == 1) {
                std::printf("  host: pipe event %d\n", ++pipe_events);
            } else {
                pipe_open = false;
            }
        }
        loop.poll();  // run whatever hop has ready; never blocks
    }
    writer.join();
    ::close(pipefd[0]);
    std::printf("hop result %d, host saw %d pipe events\n", result.get(), pipe_events);
    return result.get() == 6 && pipe_events == 3 ? 0 : 1;
}
