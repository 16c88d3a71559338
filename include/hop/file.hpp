#pragma once
/// @file
/// Files: hop::file (positional reads and writes on an io_loop) and
/// hop::run_blocking (blocking calls off the loop and off the CPU pool).
///
/// A file belongs to the loop that opened it (the loop the opening
/// coroutine runs on, or hop::default_loop() on a thread that runs none):
/// its operations run there — natively on io_uring, as pread / pwrite /
/// fsync on the blocking pool on epoll — and resume the caller on the
/// caller's own executor, so a coroutine on the CPU pool may use a file
/// too. The rest of the rule is the sockets' (hop/net.hpp): an operation
/// awaited from a coroutine on another live loop throws std::logic_error
/// naming both loops, and a file whose loop was destroyed is bound again by
/// its next operation. Any number of operations may be in flight on one
/// file at once. A file must not be moved, closed or destroyed while an
/// operation on it is in flight (on epoll a pread / pwrite may be running on
/// the blocking pool). Files are not thread-safe, except that close() may
/// be called from any thread.

#include <hop/detail/buffer.hpp>
#include <hop/detail/executor.hpp>
#include <hop/detail/io_handle.hpp>
#include <hop/detail/io_op.hpp>
#include <hop/detail/job.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <type_traits>
#include <utility>

namespace hop {

namespace detail {
/// The elastic pool behind run_blocking: a thread per waiting call up to a
/// limit (256), idle threads exit after 10 s. Process-wide, never destroyed.
executor_base& blocking_executor();
}  // namespace detail

/// Runs `fn(args...)`, a call that blocks (a syscall, a C library, a file),
/// on the blocking pool, never on the io_loop or the CPU pool, and returns
/// its future: `co_await hop::run_blocking(fn)` resumes the caller on its own
/// executor. cancel() drops the call if it has not started; a call already
/// running runs to its end.
/// @code
/// auto text = co_await hop::run_blocking([&] { return read_whole_file(path); });
/// @endcode
template <class F, class... A>
auto run_blocking(F&& fn, A&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    static_assert(!detail::is_task<R>::value, "hop::run_blocking takes a blocking function, not a coroutine");
    return detail::submit_to(detail::blocking_executor(), std::forward<F>(fn), std::forward<A>(args)...);
}

/// How file::open opens a file. Every mode opens with O_CLOEXEC; a file it
/// creates gets mode 0644 (less the umask).
enum class open_mode {
    read,        ///< O_RDONLY: the file must exist
    write,       ///< O_WRONLY | O_CREAT | O_TRUNC: created, or emptied
    read_write,  ///< O_RDWR | O_CREAT: created if missing, kept if not
    append,      ///< O_WRONLY | O_CREAT | O_APPEND: every write goes to the end
};

class file;

namespace detail {

/// read_at / read_exact_at / write_at / sync / sync_data on a file.
class file_operation : public io_operation {
public:
    enum class mode : std::uint8_t { read_some, read_exact, write_all, sync, sync_data };
    /// @throws std::system_error (EBADF) naming `what` if `f` is not open;
    ///         std::invalid_argument for a negative offset.
    file_operation(const file& f, mode m, void* data, std::size_t size, std::int64_t offset, const char* what);
    /// Bytes moved (read_at: 0 at the end of the file; sync: 0).
    /// @throws std::system_error with the errno; cancelled_error;
    ///         end_of_stream_error (read_exact_at).
    std::size_t await_resume();

private:
    // The file's loop. @throws std::system_error (EBADF) if it is not open.
    static io_loop& loop_of(const file& f, const char* what);

    const file* m_file;
    const char* m_what;
    mode m_mode;
};

/// `co_await f.sync()`: nothing to return.
class file_sync_operation : public file_operation {
public:
    using file_operation::file_operation;
    void await_resume() { (void)file_operation::await_resume(); }
};

}  // namespace detail

/// A file opened for positional reads and writes on an io_loop.
///
/// Every operation resumes the caller on the executor it awaited from and is
/// a cancellation point: a stop request cancels it (io_uring: in the kernel;
/// epoll: a call that already runs on the blocking pool runs to its end
/// first) and it throws cancelled_error — a cancelled write_at may have
/// written part of its bytes.
///
/// @code
/// auto f = co_await hop::file::open("/tmp/data", hop::open_mode::read_write);
/// co_await f.write_at(std::string_view("hello"), 0);
/// char buf[5];
/// std::size_t n = co_await f.read_at(buf, 0);   // 5
/// co_await f.sync();
/// @endcode
class file {
public:
    /// Not open (is_open() is false).
    file() noexcept = default;
    /// Moves the descriptor; `o` is closed afterwards.
    file(file&& o) noexcept = default;
    /// Closes this file, then takes `o`'s descriptor.
    file& operator=(file&& o) noexcept {
        if (this != &o) {
            m_handle = std::move(o.m_handle);
            m_path = std::move(o.m_path);
        }
        return *this;
    }
    file(const file&) = delete;
    file& operator=(const file&) = delete;
    ~file() = default;

    /// Opens `path` (openat runs on the blocking pool; the caller resumes on
    /// its own executor). The file belongs to the caller's loop
    /// (this_thread_loop()). A cancellation point before the open starts;
    /// an open that has started completes.
    /// @throws std::invalid_argument for an empty path, a path with a NUL
    ///         byte, or a bad mode; std::system_error with the errno (ENOENT,
    ///         EACCES, EISDIR...) naming the path.
    static task<file> open(std::string path, open_mode mode);

    /// `co_await f.read_at(buf, offset)`: reads up to `buf`'s size from
    /// `offset`; returns the byte count, fewer at the end of the file and 0
    /// at or past it (and for an empty buffer).
    /// @throws std::system_error (EBADF if closed or opened write-only...);
    ///         std::invalid_argument for a negative offset; cancelled_error.
    template <detail::mutable_byte_buffer B>
    detail::file_operation read_at(B&& buf, std::int64_t offset) const {
        return {*this, detail::file_operation::mode::read_some, std::data(buf), std::size(buf) * 1, offset,
                "hop::file::read_at"};
    }
    /// Fills the whole buffer from `offset`.
    /// @throws end_of_stream_error if the file ends first (bytes_read() says
    ///         how many arrived; they are in the buffer); as read_at.
    template <detail::mutable_byte_buffer B>
    detail::file_operation read_exact_at(B&& buf, std::int64_t offset) const {
        return {*this, detail::file_operation::mode::read_exact, std::data(buf), std::size(buf) * 1, offset,
                "hop::file::read_exact_at"};
    }
    /// Writes all of `bytes` at `offset` (the file grows as needed) and
    /// returns their count. On a file opened with open_mode::append the
    /// bytes go to the end and `offset` is ignored (Linux pwrite / io_uring
    /// behaviour with O_APPEND).
    /// @throws std::system_error (EBADF if closed or opened read-only, ENOSPC,
    ///         EFBIG...); std::invalid_argument for a negative offset;
    ///         cancelled_error.
    template <detail::byte_buffer B>
    detail::file_operation write_at(const B& bytes, std::int64_t offset) {
        return {*this, detail::file_operation::mode::write_all,
                const_cast<void*>(static_cast<const void*>(std::data(bytes))), std::size(bytes) * 1, offset,
                "hop::file::write_at"};
    }

    /// `co_await f.sync()`: fsync — data and metadata reach the device.
    /// @throws std::system_error (EBADF if closed, EIO...); cancelled_error.
    detail::file_sync_operation sync() {
        return {*this, detail::file_operation::mode::sync, nullptr, 0, 0, "hop::file::sync"};
    }
    /// `co_await f.sync_data()`: fdatasync — the data, and only the metadata
    /// needed to read it back.
    detail::file_sync_operation sync_data() {
        return {*this, detail::file_operation::mode::sync_data, nullptr, 0, 0, "hop::file::sync_data"};
    }

    /// The file's size in bytes now (fstat, on the calling thread).
    /// @throws std::system_error (EBADF if closed).
    std::uint64_t size() const;

    /// Closes the file. Closing twice, or a file never opened, is allowed.
    /// Must not be called while an operation on the file is in flight.
    void close() noexcept;
    /// False once closed (or moved from).
    bool is_open() const noexcept { return m_handle.is_open(); }
    /// The file descriptor (-1 when closed); still owned by the file.
    int native_handle() const noexcept { return m_handle.fd(); }
    /// The path it was opened with ("" if not open).
    const std::string& path() const noexcept { return m_path; }

private:
    friend class detail::file_operation;
    file(int fd, io_loop& loop, std::string path) noexcept
        : m_handle(fd, detail::io_handle::fd_mode::left_alone, loop), m_path(std::move(path)) {}
    // The blocking pool's part of open().
    static file open_now(std::string path, int flags, io_loop* loop);

    detail::io_handle m_handle;
    std::string m_path;
};

}  // namespace hop
