#include <hop/file.hpp>

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/counted.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <latch>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

namespace {
struct where {
    std::thread::id ran_on;
    std::thread::id resumed_on;
};
hop::task<where> blocking_from_loop() {
    where w;
    w.ran_on = co_await hop::run_blocking([] { return std::this_thread::get_id(); });
    w.resumed_on = std::this_thread::get_id();
    co_return w;
}
}  // namespace

TEST_SUITE("file") {

TEST_CASE("run_blocking returns the value or the exception of the call") {
    CHECK(hop::run_blocking([](int a, int b) { return a * b; }, 6, 7).get() == 42);
    auto f = hop::run_blocking([]() -> int { throw std::runtime_error("disk on fire"); });
    CHECK_THROWS_WITH_AS(f.get(), "disk on fire", std::runtime_error);
}

TEST_CASE("run_blocking runs off the loop thread and resumes the caller on it") {
    hop::io_loop loop;
    auto f = loop.spawn(blocking_from_loop());
    std::thread::id loop_thread = std::this_thread::get_id();
    while (!f.done()) loop.run_once();  // this thread runs the loop
    auto w = f.get();
    CHECK(w.ran_on != loop_thread);
    CHECK(w.resumed_on == loop_thread);
}

TEST_CASE("the blocking pool grows: 16 calls that wait for each other all run at once") {
    // With a fixed pool smaller than 16 this would never finish: the guard
    // below turns that into a failure, not a hang.
    std::latch all_in(16);
    std::vector<hop::future<int>> fs;
    for (int i = 0; i < 16; ++i) {
        fs.push_back(hop::run_blocking([&all_in, i] {
            all_in.arrive_and_wait();
            return i;
        }));
    }
    int sum = 0;
    for (auto& f : fs) {
        REQUIRE(f.wait_for(hop_test::scaled(60s)));
        sum += f.get();
    }
    CHECK(sum == 120);
}

}  // TEST_SUITE

using hop_test::for_each_backend;
using hop_test::what_of;
using hop_test::running_loop;

namespace {

// A failure guard only: every wait below is released by the test itself.
constexpr auto guard = hop_test::scaled(60s);

/// A fresh directory under /tmp, removed with everything in it at the end.
class temp_dir {
public:
    temp_dir() {
        char name[] = "/tmp/hop_file_test.XXXXXX";
        if (::mkdtemp(name) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
        m_path = name;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(m_path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    std::string operator/(std::string_view name) const { return m_path + "/" + std::string(name); }
    const std::string& path() const { return m_path; }

private:
    std::string m_path;
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spit(const std::string& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string random_bytes(std::size_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
}

int open_fd_count() {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
        (void)e;
        ++n;
    }
    return n;
}

/// Runs `t` on `loop` (running on another thread) and returns its result.
template <class T>
T run_on(hop::io_loop& loop, hop::task<T> t) {
    auto f = loop.spawn(std::move(t));
    REQUIRE(f.wait_for(guard));
    return std::move(f).get();
}

template <class F>
std::error_code code_of(F&& fn) {
    try {
        fn();
    } catch (const std::system_error& e) {
        return e.code();
    }
    return {};
}

bool contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

// ---- round trip -----------------------------------------------------------

struct round_trip {
    std::size_t wrote_a = 0;
    std::size_t wrote_b = 0;
    std::uint64_t size = 0;
    std::string whole;       // read_exact_at of the whole file
    std::string middle;      // read_at of 1000 bytes across a's end
    std::size_t middle_n = 0;
    bool resumed_on_loop = true;
};

hop::task<round_trip> write_then_read(std::string path, std::string a, std::string b, std::int64_t b_at,
                                      std::thread::id loop_thread) {
    round_trip r;
    auto on_loop = [&] { r.resumed_on_loop = r.resumed_on_loop && std::this_thread::get_id() == loop_thread; };
    hop::file f = co_await hop::file::open(path, hop::open_mode::read_write);
    on_loop();
    r.wrote_a = co_await f.write_at(a, 0);
    on_loop();
    r.wrote_b = co_await f.write_at(std::string_view(b), b_at);
    on_loop();
    co_await f.sync();
    on_loop();
    r.size = f.size();
    r.whole.assign(r.size, '\0');
    std::size_t n = co_await f.read_exact_at(r.whole, 0);
    on_loop();
    if (n != r.size) r.whole = "read_exact_at returned " + std::to_string(n);
    r.middle.assign(1000, '\0');
    r.middle_n = co_await f.read_at(std::span<char>(r.middle), static_cast<std::int64_t>(a.size()) - 500);
    on_loop();
    co_return r;
}

// ---- edges ----------------------------------------------------------------

struct edges {
    std::size_t read_all = 0;       // read_at of 100 bytes at 0 of a 10-byte file
    std::size_t at_end = 0;         // read_at at offset 10
    std::size_t past_end = 0;       // read_at at offset 1,000,000
    std::size_t empty_read = 0;     // read_at of an empty buffer
    std::size_t empty_write = 0;    // write_at of no bytes
    std::string exact_what;         // read_exact_at across the end
    std::size_t exact_bytes = 0;
    std::string exact_prefix;
    std::size_t exact_empty = 9;    // read_exact_at of an empty buffer at the end
};

hop::task<edges> read_the_edges(std::string path) {
    edges e;
    hop::file f = co_await hop::file::open(path, hop::open_mode::read_write);
    std::array<char, 100> buf{};
    e.read_all = co_await f.read_at(buf, 0);
    e.at_end = co_await f.read_at(buf, 10);
    e.past_end = co_await f.read_at(buf, 1'000'000);
    std::span<std::byte> none;
    e.empty_read = co_await f.read_at(none, 3);
    e.empty_write = co_await f.write_at(std::string_view(), 3);
    std::vector<unsigned char> twenty(20, 0);
    try {
        co_await f.read_exact_at(twenty, 4);
    } catch (const hop::end_of_stream_error& x) {
        e.exact_what = x.what();
        e.exact_bytes = x.bytes_read();
        e.exact_prefix.assign(twenty.begin(), twenty.begin() + static_cast<std::ptrdiff_t>(x.bytes_read()));
    }
    e.exact_empty = co_await f.read_exact_at(std::span<char>(), 10);
    co_return e;
}

hop::task<void> open_only(std::string path, hop::open_mode mode) {
    hop::file f = co_await hop::file::open(path, mode);
    (void)f;
}

hop::task<std::size_t> write_to(std::string path, hop::open_mode mode, std::string bytes, std::int64_t at) {
    hop::file f = co_await hop::file::open(path, mode);
    std::size_t n = co_await f.write_at(bytes, at);
    co_return n;
}

hop::task<std::size_t> read_from(std::string path, hop::open_mode mode) {
    hop::file f = co_await hop::file::open(path, mode);
    std::array<char, 16> buf{};
    std::size_t n = co_await f.read_at(buf, 0);
    co_return n;
}

// Opens `path` and reports whether the fd has FD_CLOEXEC, and the mode bits.
struct opened_info {
    bool cloexec = false;
    unsigned perms = 0;
    std::uint64_t size = 0;
};
hop::task<opened_info> open_and_inspect(std::string path, hop::open_mode mode) {
    hop::file f = co_await hop::file::open(path, mode);
    opened_info i;
    i.cloexec = (::fcntl(f.native_handle(), F_GETFD) & FD_CLOEXEC) != 0;
    struct stat st {};
    ::fstat(f.native_handle(), &st);
    i.perms = static_cast<unsigned>(st.st_mode & 0777);
    i.size = f.size();
    co_return i;
}

hop::task<void> append_twice(std::string path) {
    hop::file f = co_await hop::file::open(path, hop::open_mode::append);
    co_await f.write_at(std::string_view("ab"), 0);
    co_await f.write_at(std::string_view("cd"), 3);
    co_await f.sync_data();
}

// ---- concurrency ----------------------------------------------------------

constexpr std::size_t block = 4096;

hop::task<int> check_block(const hop::file* f, std::size_t i) {
    std::vector<char> buf(block);
    std::size_t n = co_await f->read_at(buf, static_cast<std::int64_t>(i * block));
    if (n != block) co_return 0;
    for (char c : buf) {
        if (c != static_cast<char>('A' + i % 26)) co_return 0;
    }
    co_return 1;
}

hop::task<std::size_t> write_block(hop::file* f, std::size_t i) {
    std::string bytes(block, static_cast<char>('A' + i % 26));
    std::size_t n = co_await f->write_at(bytes, static_cast<std::int64_t>(i * block));
    co_return n;
}

/// 100 concurrent writes of distinct blocks, then 100 concurrent reads of
/// them; returns how many reads found their block intact.
hop::task<int> hundred_at_once(std::string path, std::size_t n) {
    hop::file f = co_await hop::file::open(path, hop::open_mode::read_write);
    std::vector<hop::task<std::size_t>> writes;
    for (std::size_t i = 0; i < n; ++i) writes.push_back(write_block(&f, i));
    auto wrote = co_await hop::when_all(std::move(writes));
    for (auto w : wrote) {
        if (w != block) co_return -1;
    }
    std::vector<hop::task<int>> reads;
    for (std::size_t i = 0; i < n; ++i) reads.push_back(check_block(&f, i));
    auto ok = co_await hop::when_all(std::move(reads));
    int good = 0;
    for (int v : ok) good += v;
    co_return good;
}

// ---- affinity -------------------------------------------------------------

hop::task<hop::file> open_here(std::string path, hop::open_mode mode) {
    hop::file f = co_await hop::file::open(path, mode);
    co_return f;
}

/// On the pool, with a file bound to another thread's loop: every operation
/// resumes back on the pool. Returns how many did (of 5).
hop::task<int> use_from_pool(hop::cpu_pool* pool, hop::file* f) {
    co_await pool->schedule();
    int on_pool = 0;
    co_await f->write_at(std::string_view("pool"), 0);
    on_pool += pool->running_in_this_thread();
    std::array<char, 4> buf{};
    co_await f->read_exact_at(buf, 0);
    on_pool += pool->running_in_this_thread() && std::string_view(buf.data(), 4) == "pool";
    co_await f->sync();
    on_pool += pool->running_in_this_thread();
    co_await f->sync_data();
    on_pool += pool->running_in_this_thread();
    std::size_t n = co_await f->read_at(buf, 4);
    on_pool += pool->running_in_this_thread() && n == 0;
    co_return on_pool;
}

/// On the pool: opens (bound to the default loop), writes and reads back.
hop::task<int> open_from_pool(hop::cpu_pool* pool, std::string path) {
    co_await pool->schedule();
    int on_pool = 0;
    hop::file f = co_await hop::file::open(path, hop::open_mode::read_write);
    on_pool += pool->running_in_this_thread();
    co_await f.write_at(std::string_view("xyz"), 1);
    on_pool += pool->running_in_this_thread();
    std::string back(4, '?');
    std::size_t n = co_await f.read_at(back, 0);
    on_pool += pool->running_in_this_thread() && n == 4 && back == std::string("\0xyz", 4);
    co_return on_pool;
}

// ---- misuse ----------------------------------------------------------------

struct after_close {
    std::string read_what;
    std::string write_what;
    std::string sync_what;
    std::error_code read_code;
    bool open_after_close = true;
};

hop::task<after_close> use_after_close(std::string path) {
    after_close r;
    hop::file f = co_await hop::file::open(path, hop::open_mode::read_write);
    f.close();
    f.close();  // twice is fine
    r.open_after_close = f.is_open() || f.native_handle() != -1;
    std::array<char, 8> buf{};
    try {
        co_await f.read_at(buf, 0);
    } catch (const std::system_error& e) {
        r.read_what = e.what();
        r.read_code = e.code();
    }
    try {
        co_await f.write_at(buf, 0);
    } catch (const std::system_error& e) {
        r.write_what = e.what();
    }
    try {
        co_await f.sync();
    } catch (const std::system_error& e) {
        r.sync_what = e.what();
    }
    co_return r;
}

// ---- cancellation ----------------------------------------------------------

hop::task<std::size_t> write_after_gate(hop_test::counted c, hop::file* f, hop::future<void> gate, bool* wrote) {
    (void)c;
    co_await gate;
    std::size_t n = co_await f->write_at(std::string_view("never"), 0);
    *wrote = true;
    co_return n;
}

hop::task<void> open_after_gate(hop_test::counted c, std::string path, hop::future<void> gate) {
    (void)c;
    co_await gate;
    hop::file f = co_await hop::file::open(path, hop::open_mode::write);
}

hop::task<int> racing_read(hop_test::counted c, const hop::file* f, std::size_t i, std::size_t blocks) {
    (void)c;
    std::vector<char> buf(block * 4);
    const std::size_t at = (i % blocks) * block;
    std::size_t n = co_await f->read_at(buf, static_cast<std::int64_t>(at));
    co_return n > 0 && buf[0] == static_cast<char>('A' + (at / block) % 26) ? 1 : 0;
}

hop::task<int> racing_write(hop_test::counted c, hop::file* f, std::size_t i, std::size_t blocks) {
    (void)c;
    std::string bytes(block, static_cast<char>('A' + (i % blocks) % 26));
    co_await f->write_at(bytes, static_cast<std::int64_t>((i % blocks) * block));
    co_await f->sync_data();
    co_return 1;
}

// Reads `size` bytes (a sparse file: the pread takes a while) after saying
// it is about to.
hop::task<std::size_t> long_read(hop_test::counted c, hop::file* f, std::vector<char>* buf, hop::promise<void>* started) {
    (void)c;
    started->set_value();
    std::size_t n = co_await f->read_at(*buf, 0);
    co_return n;
}

hop::task<std::string> copy_file(std::string from, std::string to) {
    hop::file in = co_await hop::file::open(from, hop::open_mode::read);
    hop::file out = co_await hop::file::open(to, hop::open_mode::write);
    std::vector<std::byte> buf(64 * 1024);
    std::int64_t at = 0;
    for (;;) {
        std::size_t n = co_await in.read_at(buf, at);
        if (n == 0) break;
        co_await out.write_at(std::span<const std::byte>(buf.data(), n), at);
        at += static_cast<std::int64_t>(n);
    }
    co_return out.path();
}

}  // namespace

TEST_SUITE("file") {

TEST_CASE("write_at then read_at give back the same bytes: 4 MiB, at offsets, a hole reads as zeros") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        const std::string a = random_bytes(4 << 20, 1);
        const std::string bb = random_bytes(12345, 2);
        const std::int64_t b_at = (4 << 20) + 777;  // 777 bytes of hole
        running_loop rl(b);
        auto r = run_on(rl.loop(), write_then_read(dir / "data", a, bb, b_at, rl.thread_id()));
        CHECK(r.wrote_a == a.size());
        CHECK(r.wrote_b == bb.size());
        std::string expected = a + std::string(777, '\0') + bb;
        CHECK(r.size == expected.size());
        CHECK(r.whole.size() == expected.size());
        CHECK(r.whole == expected);  // no 4 MiB dump on failure: compare
        CHECK(r.middle_n == 1000);
        CHECK(r.middle == expected.substr(a.size() - 500, 1000));
        CHECK(slurp(dir / "data") == expected);
        CHECK(r.resumed_on_loop);
    });
}

TEST_CASE("read_at at or past the end gives 0, across the end a short count; read_exact_at throws end_of_stream_error") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        spit(dir / "ten", "0123456789");
        running_loop rl(b);
        auto e = run_on(rl.loop(), read_the_edges(dir / "ten"));
        CHECK(e.read_all == 10);
        CHECK(e.at_end == 0);
        CHECK(e.past_end == 0);
        CHECK(e.empty_read == 0);
        CHECK(e.empty_write == 0);
        CHECK(e.exact_bytes == 6);
        CHECK(e.exact_prefix == "456789");
        CHECK(contains(e.exact_what, "hop::file::read_exact_at"));
        CHECK(contains(e.exact_what, "6 of 20"));
        CHECK(e.exact_empty == 0);
        CHECK(slurp(dir / "ten") == "0123456789");
    });
}

TEST_CASE("open: a missing file throws std::system_error ENOENT naming the path; bad arguments throw invalid_argument") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        running_loop rl(b);
        const std::string missing = dir / "no-such-file";
        auto f = rl.loop().spawn(open_only(missing, hop::open_mode::read));
        REQUIRE(f.wait_for(guard));
        CHECK(code_of([&] { f.get(); }) == std::errc::no_such_file_or_directory);
        const std::string what = what_of<std::system_error>([&] { f.get(); });
        CHECK(contains(what, missing));
        CHECK(contains(what, "hop::file::open"));

        // A directory cannot be opened for writing.
        auto d = rl.loop().spawn(open_only(dir.path(), hop::open_mode::write));
        REQUIRE(d.wait_for(guard));
        CHECK(code_of([&] { d.get(); }) == std::errc::is_a_directory);

        auto empty = rl.loop().spawn(open_only("", hop::open_mode::read));
        REQUIRE(empty.wait_for(guard));
        CHECK(contains(what_of<std::invalid_argument>([&] { empty.get(); }), "empty"));
        auto nul = rl.loop().spawn(open_only(std::string("a\0b", 3), hop::open_mode::read));
        REQUIRE(nul.wait_for(guard));
        CHECK(contains(what_of<std::invalid_argument>([&] { nul.get(); }), "NUL"));
        auto bad = rl.loop().spawn(open_only(dir / "x", static_cast<hop::open_mode>(42)));
        REQUIRE(bad.wait_for(guard));
        CHECK(contains(what_of<std::invalid_argument>([&] { bad.get(); }), "42"));
        CHECK_FALSE(std::filesystem::exists(dir / "x"));
    });
}

TEST_CASE("writing a file opened read-only, or reading one opened write-only, throws std::system_error EBADF") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        spit(dir / "ro", "keep");
        running_loop rl(b);
        auto w = rl.loop().spawn(write_to(dir / "ro", hop::open_mode::read, "overwrite", 0));
        REQUIRE(w.wait_for(guard));
        CHECK(code_of([&] { w.get(); }) == std::errc::bad_file_descriptor);
        const std::string what = what_of<std::system_error>([&] { w.get(); });
        CHECK(contains(what, "hop::file::write_at"));
        CHECK(contains(what, dir / "ro"));
        CHECK(slurp(dir / "ro") == "keep");

        auto r = rl.loop().spawn(read_from(dir / "ro", hop::open_mode::append));
        REQUIRE(r.wait_for(guard));
        CHECK(code_of([&] { r.get(); }) == std::errc::bad_file_descriptor);
        CHECK(contains(what_of<std::system_error>([&] { r.get(); }), "hop::file::read_at"));
    });
}

TEST_CASE("open modes: write truncates, read_write keeps, append writes at the end; all O_CLOEXEC, created 0644") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        const std::string p = dir / "modes";
        running_loop rl(b);
        const mode_t mask = ::umask(0);
        ::umask(mask);

        auto created = run_on(rl.loop(), open_and_inspect(p, hop::open_mode::read_write));
        CHECK(created.cloexec);
        CHECK(created.perms == (0644u & ~static_cast<unsigned>(mask)));
        CHECK(created.size == 0);

        CHECK(run_on(rl.loop(), write_to(p, hop::open_mode::read_write, "0123456789", 0)) == 10);
        // read_write keeps the bytes; read needs no write permission.
        CHECK(run_on(rl.loop(), open_and_inspect(p, hop::open_mode::read_write)).size == 10);
        auto ro = run_on(rl.loop(), open_and_inspect(p, hop::open_mode::read));
        CHECK(ro.cloexec);
        CHECK(ro.size == 10);

        run_on(rl.loop(), append_twice(p));
        CHECK(slurp(p) == "0123456789abcd");
        CHECK(run_on(rl.loop(), open_and_inspect(p, hop::open_mode::append)).cloexec);

        auto w = run_on(rl.loop(), open_and_inspect(p, hop::open_mode::write));
        CHECK(w.cloexec);
        CHECK(w.size == 0);
        CHECK(slurp(p).empty());
        // append creates a missing file too.
        run_on(rl.loop(), append_twice(dir / "new"));
        CHECK(slurp(dir / "new") == "abcd");
    });
}

TEST_CASE("100 concurrent write_at, then 100 concurrent read_at, on one file (when_all)") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        running_loop rl(b);
        CHECK(run_on(rl.loop(), hundred_at_once(dir / "blocks", 100)) == 100);
        CHECK(std::filesystem::file_size(dir / "blocks") == 100 * block);
    });
}

TEST_CASE("file operations awaited on a cpu_pool resume on the pool") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        hop::cpu_pool pool{2};
        running_loop rl(b);
        // Bound to the running loop: each operation is started there from the pool.
        hop::file f = run_on(rl.loop(), open_here(dir / "shared", hop::open_mode::read_write));
        REQUIRE(f.is_open());
        auto on_pool = hop::spawn(pool, use_from_pool(&pool, &f));
        REQUIRE(on_pool.wait_for(guard));
        CHECK(on_pool.get() == 5);
        CHECK(slurp(dir / "shared") == "pool");
    });
}

TEST_CASE("a file opened on a cpu_pool uses the default loop and resumes on the pool") {
    if (!hop_test::env_backend_available()) return;
    temp_dir dir;
    hop::cpu_pool pool{1};
    auto f = hop::spawn(pool, open_from_pool(&pool, dir / "default"));
    REQUIRE(f.wait_for(guard));
    CHECK(f.get() == 3);
}

TEST_CASE("a closed, moved-from or default file throws std::system_error EBADF naming the operation") {
    hop::file none;
    CHECK_FALSE(none.is_open());
    CHECK(none.native_handle() == -1);
    std::array<char, 4> buf{};
    CHECK(code_of([&] { (void)none.read_at(buf, 0); }) == std::errc::bad_file_descriptor);
    CHECK(contains(what_of<std::system_error>([&] { (void)none.read_at(buf, 0); }), "hop::file::read_at"));
    CHECK(contains(what_of<std::system_error>([&] { (void)none.read_exact_at(buf, 0); }), "hop::file::read_exact_at"));
    CHECK(contains(what_of<std::system_error>([&] { (void)none.write_at(buf, 0); }), "hop::file::write_at"));
    CHECK(contains(what_of<std::system_error>([&] { (void)none.sync(); }), "hop::file::sync"));
    CHECK(contains(what_of<std::system_error>([&] { (void)none.sync_data(); }), "hop::file::sync_data"));
    CHECK(code_of([&] { (void)none.size(); }) == std::errc::bad_file_descriptor);
    none.close();  // closing a file never opened is allowed

    for_each_backend([](hop::backend b) {
        temp_dir dir;
        running_loop rl(b);
        auto r = run_on(rl.loop(), use_after_close(dir / "closed"));
        CHECK_FALSE(r.open_after_close);
        CHECK(r.read_code == std::errc::bad_file_descriptor);
        CHECK(contains(r.read_what, "hop::file::read_at"));
        CHECK(contains(r.read_what, "not open"));
        CHECK(contains(r.write_what, "hop::file::write_at"));
        CHECK(contains(r.sync_what, "hop::file::sync"));

        hop::file f = run_on(rl.loop(), open_here(dir / "moved", hop::open_mode::write));
        const int fd = f.native_handle();
        hop::file g = std::move(f);
        CHECK(g.native_handle() == fd);
        CHECK(g.path() == dir / "moved");
        CHECK_FALSE(f.is_open());  // NOLINT(bugprone-use-after-move): moved-from is specified
        CHECK(code_of([&] { (void)f.sync(); }) == std::errc::bad_file_descriptor);
        // Move-assigning over an open file closes it.
        hop::file h = run_on(rl.loop(), open_here(dir / "other", hop::open_mode::write));
        const int old_fd = h.native_handle();
        h = std::move(g);
        CHECK(h.native_handle() == fd);
        CHECK(::fcntl(old_fd, F_GETFD) == -1);
    });
}

TEST_CASE("a negative offset throws std::invalid_argument naming it") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        running_loop rl(b);
        hop::file f = run_on(rl.loop(), open_here(dir / "neg", hop::open_mode::read_write));
        std::array<char, 4> buf{};
        CHECK(contains(what_of<std::invalid_argument>([&] { (void)f.read_at(buf, -1); }), "offset -1"));
        CHECK(contains(what_of<std::invalid_argument>([&] { (void)f.write_at(buf, -5); }), "offset -5"));
    });
}

TEST_CASE("stop requested before a file operation or an open: it throws cancelled_error and does not run") {
    for_each_backend([](hop::backend b) {
        hop_test::counters c;
        temp_dir dir;
        {
            running_loop rl(b);
            hop::file f = run_on(rl.loop(), open_here(dir / "untouched", hop::open_mode::read_write));
            hop::promise<void> gate;
            bool wrote = false;
            auto g = rl.loop().spawn(write_after_gate(hop_test::counted{c}, &f, gate.get_future(), &wrote));
            CHECK(g.cancel());
            gate.set_value();
            REQUIRE(g.wait_for(guard));
            CHECK(g.cancelled());
            CHECK_THROWS_AS(g.get(), hop::cancelled_error);
            CHECK_FALSE(wrote);
            CHECK(f.size() == 0);

            // The open itself: the file is not created.
            hop::promise<void> gate2;
            auto o = rl.loop().spawn(open_after_gate(hop_test::counted{c}, dir / "never", gate2.get_future()));
            CHECK(o.cancel());
            gate2.set_value();
            REQUIRE(o.wait_for(guard));
            CHECK(o.cancelled());
            CHECK_FALSE(std::filesystem::exists(dir / "never"));
        }
        CHECK(c.alive() == 0);
    });
}

TEST_CASE("cancellation race: 400 reads and writes each cancelled at a random point end cleanly") {
    for_each_backend([](hop::backend b) {
        constexpr std::size_t n = 400;
        constexpr std::size_t blocks = 16;
        hop_test::counters c;
        temp_dir dir;
        int finished = 0;
        int cancelled = 0;
        {
            hop::cpu_pool pool{2};
            running_loop rl(b);
            hop::file f = run_on(rl.loop(), open_here(dir / "race", hop::open_mode::read_write));
            for (std::size_t i = 0; i < blocks; ++i) CHECK(run_on(rl.loop(), write_block(&f, i)) == block);
            std::mt19937 rng(20240611u + static_cast<unsigned>(b));
            std::vector<hop::future<int>> fs;
            fs.reserve(n);
            for (std::size_t i = 0; i < n; ++i) {
                hop::future<int> fut;
                const bool write = i % 3 == 0;
                const bool from_pool = i % 2 == 0;
                if (write) {
                    fut = from_pool ? hop::spawn(pool, racing_write(hop_test::counted{c}, &f, i, blocks))
                                    : rl.loop().spawn(racing_write(hop_test::counted{c}, &f, i, blocks));
                } else {
                    fut = from_pool ? hop::spawn(pool, racing_read(hop_test::counted{c}, &f, i, blocks))
                                    : rl.loop().spawn(racing_read(hop_test::counted{c}, &f, i, blocks));
                }
                switch (rng() % 4) {
                    case 0:
                        break;
                    case 1:
                        std::this_thread::yield();
                        break;
                    case 2:
                        for (unsigned k = rng() % 50; k > 0; --k) std::this_thread::yield();
                        break;
                    default:
                        fut.wait_for(std::chrono::microseconds(rng() % 300));
                        break;
                }
                fut.cancel();
                fs.push_back(std::move(fut));
            }
            for (auto& fut : fs) {
                REQUIRE(fut.wait_for(guard));
                if (fut.cancelled()) {
                    ++cancelled;
                } else {
                    CHECK(fut.get() == 1);  // a read that ran saw its block intact
                    ++finished;
                }
            }
        }
        CHECK(finished + cancelled == static_cast<int>(n));
        CHECK(c.alive() == 0);
        MESSAGE("finished " << finished << ", cancelled " << cancelled);
    });
}

TEST_CASE("no descriptor leaks: the count of open fds is unchanged after opening, failing and closing files") {
    for_each_backend([](hop::backend b) {
        temp_dir dir;
        spit(dir / "src", random_bytes(300'000, 3));
        const int before = open_fd_count();
        {
            running_loop rl(b);
            for (int i = 0; i < 20; ++i) {
                CHECK(run_on(rl.loop(), copy_file(dir / "src", dir / ("copy" + std::to_string(i)))) ==
                      dir / ("copy" + std::to_string(i)));
                auto miss = rl.loop().spawn(open_only(dir / "missing", hop::open_mode::read));
                REQUIRE(miss.wait_for(guard));
                CHECK_THROWS_AS(miss.get(), std::system_error);
                auto bad = rl.loop().spawn(write_to(dir / "src", hop::open_mode::read, "x", 0));
                REQUIRE(bad.wait_for(guard));
                CHECK_THROWS_AS(bad.get(), std::system_error);
            }
            CHECK(slurp(dir / "copy19") == slurp(dir / "src"));
            hop::file kept = run_on(rl.loop(), open_here(dir / "kept", hop::open_mode::write));
            CHECK(open_fd_count() > before);
        }
        CHECK(open_fd_count() == before);
    });
}

TEST_CASE("destroying a loop with a file operation in flight waits for it; the waiter ends") {
    for_each_backend([](hop::backend b) {
        constexpr std::size_t size = std::size_t{64} << 20;
        hop_test::counters c;
        temp_dir dir;
        const std::string p = dir / "sparse";
        spit(p, "");
        std::filesystem::resize_file(p, size);  // a hole: no disk, yet a pread that takes a while
        // On the heap, and leaked if the destructor hangs: the failure is
        // reported instead of hanging the run.
        auto* loop = new hop::io_loop(hop_test::options_for(b));
        auto* buf = new std::vector<char>(size);
        auto* f = new hop::file;
        std::thread runner([loop] { loop->run(); });
        *f = run_on(*loop, open_here(p, hop::open_mode::read));
        hop::promise<void> started;
        auto started_f = started.get_future();
        auto r = loop->spawn(long_read(hop_test::counted{c}, f, buf, &started));
        REQUIRE(started_f.wait_for(guard));
        loop->stop();
        runner.join();
        auto* destroyed = new hop::promise<void>;
        auto destroyed_f = destroyed->get_future();
        std::thread destroyer([loop, destroyed] {
            delete loop;
            destroyed->set_value();
        });
        if (!destroyed_f.wait_for(guard)) {
            FAIL_CHECK("~io_loop did not return with a file operation in flight");
            destroyer.detach();
            return;
        }
        destroyer.join();
        delete destroyed;
        REQUIRE(r.done());
        if (!r.cancelled()) CHECK(r.get() == size);  // it ran to its end, or was cancelled in the kernel
        CHECK(c.alive() == 0);
        delete f;
        delete buf;
    });
}

TEST_CASE("hop::run copies a file with file::open, read_at and write_at") {
    if (!hop_test::env_backend_available()) return;
    temp_dir dir;
    const std::string src = random_bytes(1'000'003, 4);
    spit(dir / "in", src);
    CHECK(hop::run(copy_file(dir / "in", dir / "out")) == dir / "out");
    CHECK(slurp(dir / "out") == src);
}

}  // TEST_SUITE
