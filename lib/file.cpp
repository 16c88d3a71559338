// hop::file, and the blocking pool behind run_blocking.

#include <hop/file.hpp>

#include <hop/io_loop.hpp>

#include "loop_core.hpp"
#include "metrics_impl.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#endif

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>

namespace hop::detail {

namespace {

constexpr std::size_t max_blocking_threads = 256;
constexpr auto idle_exit = std::chrono::seconds(10);

class blocking_pool final : public executor_base {
public:
    void post_item(work_item* w) override { post_continuation(w); }

    void post_continuation(work_item* w) noexcept override {
        bool spawn = false;
        {
            std::lock_guard lock(m_mutex);
            m_queue.push_back(w);
            // A new thread only when no idle one can take it.
            if (m_idle < m_queue.size() && m_threads < max_blocking_threads) {
                ++m_threads;
                spawn = true;
            }
        }
        m_cv.notify_one();
        if (spawn) {
            try {
                std::thread([this] { work(); }).detach();
            } catch (...) {
                std::lock_guard lock(m_mutex);
                --m_threads;  // the queued call waits for a thread that exists
            }
        }
    }

private:
    void work() {
        current_executor_scope scope(this);
        std::unique_lock lock(m_mutex);
        for (;;) {
            ++m_idle;
            bool got = m_cv.wait_for(lock, idle_exit, [&] { return !m_queue.empty(); });
            --m_idle;
            if (!got) {
                --m_threads;
                return;
            }
            auto* w = m_queue.front();
            m_queue.pop_front();
            ++m_jobs;
            lock.unlock();
            w->run(w);
            lock.lock();
        }
    }

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<work_item*> m_queue;
    std::size_t m_threads = 0;
    std::size_t m_idle = 0;
    std::uint64_t m_jobs = 0;

public:
    blocking_pool_counts counts() noexcept {
        std::lock_guard lock(m_mutex);
        return {m_threads, m_queue.size(), m_threads - m_idle, m_jobs};
    }
};

}  // namespace

namespace {
blocking_pool& the_blocking_pool() {
    // Never destroyed: its detached threads may still be parked at exit.
    static auto* pool = new blocking_pool;
    return *pool;
}
}  // namespace

executor_base& blocking_executor() { return the_blocking_pool(); }

blocking_pool_counts read_blocking_pool() noexcept { return the_blocking_pool().counts(); }

}  // namespace hop::detail

namespace hop {

namespace {

// Linux moves at most this many bytes in one read or write (MAX_RW_COUNT);
// a longer read_at is a short read, as pread would make it.
constexpr std::size_t max_single_transfer = 0x7ffff000;

int open_flags(open_mode mode) {
    switch (mode) {
        case open_mode::read:
            return O_RDONLY | O_CLOEXEC;
        case open_mode::write:
            return O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC;
        case open_mode::read_write:
            return O_RDWR | O_CREAT | O_CLOEXEC;
        case open_mode::append:
            return O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC;
    }
    throw std::invalid_argument("hop::file::open: open_mode " + std::to_string(static_cast<int>(mode)) +
                                " is not read, write, read_write or append");
}

// "hop::file::read_at (fd 7, '/tmp/x')"
std::string describe(const char* what, int fd, const std::string& path) {
    return std::string(what) + " (fd " + std::to_string(fd) + ", '" + path + "')";
}

}  // namespace

task<file> file::open(std::string path, open_mode mode) {
    const int flags = open_flags(mode);
    if (path.empty()) throw std::invalid_argument("hop::file::open: the path is empty");
    if (path.find('\0') != std::string::npos) {
        throw std::invalid_argument("hop::file::open: the path contains a NUL byte");
    }
    io_loop& loop = this_thread_loop();
    co_await cancellation_point();
    file f = co_await run_blocking(&file::open_now, std::move(path), flags, &loop);
    co_return f;
}

file file::open_now(std::string path, int flags, io_loop* loop) {
    const int fd = ::openat(AT_FDCWD, path.c_str(), flags, 0644);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "hop::file::open: '" + path + "'");
    return file(fd, *loop, std::move(path));
}

std::uint64_t file::size() const {
    if (!is_open()) throw std::system_error(EBADF, std::generic_category(), "hop::file::size: the file is not open");
    struct stat st {};
    if (::fstat(m_handle.fd(), &st) != 0) {
        throw std::system_error(errno, std::generic_category(), describe("hop::file::size", m_handle.fd(), m_path));
    }
    return static_cast<std::uint64_t>(st.st_size);
}

void file::close() noexcept {
    m_handle.close();
    m_path.clear();
}

namespace detail {

io_loop& file_operation::loop_of(const file& f, const char* what) { return f.m_handle.loop_for(what); }

file_operation::file_operation(const file& f, mode m, void* data, std::size_t size, std::int64_t offset,
                               const char* what)
    : io_operation(loop_of(f, what)), m_file(&f), m_what(what), m_mode(m) {
    if (offset < 0) {
        throw std::invalid_argument(std::string(what) + ": offset " + std::to_string(offset) + " is negative");
    }
    io.fd = f.m_handle.fd();
    io.buf = data;
    io.offset = static_cast<std::uint64_t>(offset);
    switch (m) {
        case mode::read_some:
            io.kind = &io_kind_read_at;
            io.len = size < max_single_transfer ? size : max_single_transfer;
            break;
        case mode::read_exact:
            io.kind = &io_kind_read_at;
            io.len = size;
            io.all = true;
            break;
        case mode::write_all:
            io.kind = &io_kind_write_at;
            io.len = size;
            io.all = true;
            break;
        case mode::sync:
            io.kind = &io_kind_fsync;
            break;
        case mode::sync_data:
            io.kind = &io_kind_fsync;
            io.flags = io_params::fsync_data_only;
            break;
    }
}

std::size_t file_operation::await_resume() {
    const int r = take_result();
    if (r < 0) throw_io_failure(r, describe(m_what, io.fd, m_file->path()));
    switch (m_mode) {
        case mode::read_some:
            return static_cast<std::size_t>(r);
        case mode::read_exact:
            if (io.done < io.len) {
                throw end_of_stream_error(describe(m_what, io.fd, m_file->path()) + ": the file ended after " +
                                              std::to_string(io.done) + " of " + std::to_string(io.len) +
                                              " bytes from offset " + std::to_string(io.offset),
                                          io.done);
            }
            return io.done;
        case mode::write_all:
            // A write that moves nothing without an error (never seen on a
            // regular file) must not pass for a complete one.
            if (io.done < io.len) {
                throw std::system_error(EIO, std::generic_category(),
                                        describe(m_what, io.fd, m_file->path()) + ": wrote only " +
                                            std::to_string(io.done) + " of " + std::to_string(io.len) + " bytes");
            }
            return io.done;
        case mode::sync:
        case mode::sync_data:
            break;
    }
    return 0;
}

}  // namespace detail

}  // namespace hop
