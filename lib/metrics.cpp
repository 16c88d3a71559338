// hop::metrics: the registry of live loops, the per-thread counter blocks,
// read(), the Prometheus text writer, and the stall watchdog.

#include <hop/metrics.hpp>

#include "io_kinds.hpp"
#include "loop_core.hpp"
#include "metrics_impl.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>
#include <execinfo.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cerrno>
#include <cstddef>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <thread>
#include <map>
#include <unordered_map>
#include <utility>

namespace hop::detail {

std::atomic<bool> g_counting{true};

namespace {

// ---- live loops ----------------------------------------------------------------

struct loop_registry {
    std::mutex mutex;
    std::vector<loop_core*> loops;
};

loop_registry& loops() {
    // Never destroyed: loops may outlive static destruction (default_loop).
    static auto* r = new loop_registry;
    return *r;
}

void start_watchdog(bool asked = false);

// ---- per-thread blocks ---------------------------------------------------------

// Upper bounds of the HTTP latency buckets, in seconds.
constexpr std::array<double, 14> duration_bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
constexpr std::size_t counter_count = static_cast<std::size_t>(counter::count_);

constexpr std::size_t histogram_count = static_cast<std::size_t>(histogram_id::count_);

struct thread_histogram {
    relaxed_counter buckets[duration_bounds.size() + 1];
    relaxed_counter sum_ns;
};

struct thread_block {
    relaxed_counter counters[counter_count];
    thread_histogram histograms[histogram_count];

    void add_to(thread_block& total) const noexcept {
        for (std::size_t i = 0; i < counter_count; ++i) total.counters[i].add_always(counters[i].get());
        for (std::size_t h = 0; h < histogram_count; ++h) {
            const thread_histogram& from = histograms[h];
            thread_histogram& to = total.histograms[h];
            for (std::size_t i = 0; i < std::size(from.buckets); ++i) to.buckets[i].add_always(from.buckets[i].get());
            to.sum_ns.add_always(from.sum_ns.get());
        }
    }
};

struct block_registry {
    std::mutex mutex;
    std::vector<thread_block*> live;
    thread_block retired;  // threads that ended (under mutex)
};

block_registry& blocks() {
    static auto* r = new block_registry;  // never destroyed (thread exits after static destruction)
    return *r;
}

// The calling thread's block: a plain thread-local pointer (no guard on
// the counting path). The reaper folds the block into `retired` when the
// thread ends; a count made after that (a destructor at exit) gets a fresh
// block that stays listed for good.
thread_local thread_block* tl_block = nullptr;

struct block_reaper {
    block_reaper() = default;
    block_reaper(const block_reaper&) = delete;
    block_reaper& operator=(const block_reaper&) = delete;
    ~block_reaper() {
        thread_block* b = std::exchange(tl_block, nullptr);
        if (b == nullptr) return;
        auto& r = blocks();
        std::lock_guard lock(r.mutex);
        b->add_to(r.retired);
        r.live.erase(std::find(r.live.begin(), r.live.end(), b));
        delete b;
    }
};

[[gnu::noinline]] thread_block& new_local_block() {
    auto* b = new thread_block;
    {
        auto& r = blocks();
        std::lock_guard lock(r.mutex);
        r.live.push_back(b);
    }
    tl_block = b;
    thread_local block_reaper reaper;  // constructed once per thread: its end retires the block
    (void)reaper;
    return *b;
}

thread_block& local_block() {
    if (thread_block* b = tl_block) return *b;
    return new_local_block();
}

}  // namespace

void count(counter c, std::uint64_t n) noexcept { local_block().counters[static_cast<std::size_t>(c)].add(n); }

void observe(histogram_id h, std::chrono::nanoseconds d) noexcept {
    if (!counting()) return;
    thread_histogram& b = local_block().histograms[static_cast<std::size_t>(h)];
    const double s = std::chrono::duration<double>(d).count();
    const auto it = std::lower_bound(duration_bounds.begin(), duration_bounds.end(), s);
    b.buckets[static_cast<std::size_t>(it - duration_bounds.begin())].add();
    b.sum_ns.add(static_cast<std::uint64_t>(d.count() < 0 ? 0 : d.count()));
}

void register_loop(loop_core& c) noexcept {
    {
        auto& r = loops();
        std::lock_guard lock(r.mutex);
        r.loops.push_back(&c);
    }
    start_watchdog();
}

void unregister_loop(loop_core& c) noexcept {
    auto& r = loops();
    std::lock_guard lock(r.mutex);
    r.loops.erase(std::remove(r.loops.begin(), r.loops.end(), &c), r.loops.end());
}

// ---- the stall watchdog --------------------------------------------------------
//
// One thread for the process, started with the first loop. Every threshold
// / 4 it looks at each loop's stall_watch: a loop busy with the same
// progress as at an earlier look at least `threshold` ago is held by one
// handler. It is reported once: the watchdog signals the loop thread, whose
// handler records its stack with backtrace() (async-signal-safe once
// libgcc's unwinder is loaded, which the watchdog does first), and the
// watchdog symbolizes it and logs one line.

namespace {

// HOP_STALL_THRESHOLD_MS, read once at start: the threshold before any
// set_stall_threshold (see metrics.hpp).
std::int64_t initial_threshold_ms() noexcept {
    constexpr std::int64_t fallback = 100;
    const char* v = std::getenv("HOP_STALL_THRESHOLD_MS");
    if (v == nullptr || *v == '\0') return fallback;
    char* end = nullptr;
    errno = 0;
    const long long ms = std::strtoll(v, &end, 10);
    if (*end != '\0' || errno != 0 || ms < 0) {
        std::fprintf(stderr,
                     "hop: HOP_STALL_THRESHOLD_MS='%s' is not a number of milliseconds (0 or more, 0: off); "
                     "the stall threshold stays %lld ms\n",
                     v, static_cast<long long>(fallback));
        return fallback;
    }
    return ms;
}

std::atomic<std::int64_t> g_threshold_ms{initial_threshold_ms()};  // see metrics.hpp
std::atomic<std::uint64_t> g_scans{0};

struct log_sink {
    std::mutex mutex;
    std::function<void(std::string_view)> fn;
};
log_sink& sink() {
    static auto* s = new log_sink;
    return *s;
}

int stall_signal() noexcept { return SIGRTMIN + 5; }

// The capture protocol between the watchdog and the signal handler:
//   idle --watchdog--> requested --handler (target thread)--> capturing --> done
//   requested --watchdog (timed out)--> idle
enum capture_state : int { cap_idle, cap_requested, cap_capturing, cap_done };
std::atomic<int> g_capture{cap_idle};
std::atomic<unsigned long> g_capture_target{0};
void* g_frames[64];
int g_frame_count = 0;
bool g_handler_installed = false;

void on_stall_signal(int) {
    if (static_cast<unsigned long>(::pthread_self()) != g_capture_target.load(std::memory_order_acquire)) return;
    int expected = cap_requested;
    if (!g_capture.compare_exchange_strong(expected, cap_capturing, std::memory_order_acq_rel)) return;
    const int saved = errno;
    g_frame_count = ::backtrace(g_frames, static_cast<int>(std::size(g_frames)));
    errno = saved;
    g_capture.store(cap_done, std::memory_order_release);
}

// ---- symbolizing ----------------------------------------------------------------
//
// backtrace_symbols() knows only the dynamic symbol table: a program's own
// functions are nameless unless it was linked with -rdynamic, and lambdas
// and coroutine bodies (local symbols) are nameless always. The watchdog
// reads the full symbol table (.symtab; .dynsym where it was stripped) of
// each object a frame lies in instead, once per object.

struct elf_function {
    std::uintptr_t start = 0;
    std::uintptr_t size = 0;
    const char* name = nullptr;  // in the file's mapping, kept for good
    std::size_t name_len = 0;
};

// The functions of the ELF file at `path`, sorted by address (link-time
// addresses); empty if it cannot be read. The file stays mapped (read-only,
// paged in as names are read) while any are found: a report reads names
// from it without opening anything.
std::vector<elf_function> read_functions(const std::string& path) {
    std::vector<elf_function> out;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    struct stat st {};
    void* map = MAP_FAILED;
    if (::fstat(fd, &st) == 0 && static_cast<std::size_t>(st.st_size) >= sizeof(Elf64_Ehdr)) {
        map = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    }
    ::close(fd);
    if (map == MAP_FAILED) return out;
    const auto* base = static_cast<const unsigned char*>(map);
    const std::size_t size = static_cast<std::size_t>(st.st_size);
    const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
    const bool ok = std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 && eh->e_ident[EI_CLASS] == ELFCLASS64 &&
                    eh->e_shoff != 0 && eh->e_shentsize == sizeof(Elf64_Shdr) &&
                    eh->e_shoff + std::size_t{eh->e_shnum} * sizeof(Elf64_Shdr) <= size;
    if (ok) {
        const auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
        const Elf64_Shdr* table = nullptr;
        for (unsigned i = 0; i < eh->e_shnum; ++i) {
            if (sh[i].sh_type == SHT_SYMTAB) table = &sh[i];
        }
        for (unsigned i = 0; table == nullptr && i < eh->e_shnum; ++i) {
            if (sh[i].sh_type == SHT_DYNSYM) table = &sh[i];
        }
        if (table != nullptr && table->sh_link < eh->e_shnum && table->sh_offset + table->sh_size <= size) {
            const Elf64_Shdr& strings = sh[table->sh_link];
            const auto* syms = reinterpret_cast<const Elf64_Sym*>(base + table->sh_offset);
            const std::size_t n = table->sh_size / sizeof(Elf64_Sym);
            for (std::size_t i = 0; i < n && strings.sh_offset + strings.sh_size <= size; ++i) {
                const Elf64_Sym& s = syms[i];
                if (ELF64_ST_TYPE(s.st_info) != STT_FUNC || s.st_value == 0 || s.st_name >= strings.sh_size) continue;
                const char* name = reinterpret_cast<const char*>(base + strings.sh_offset + s.st_name);
                out.push_back({static_cast<std::uintptr_t>(s.st_value), static_cast<std::uintptr_t>(s.st_size), name,
                               ::strnlen(name, strings.sh_size - s.st_name)});
            }
        }
    }
    if (out.empty()) ::munmap(map, size);
    std::sort(out.begin(), out.end(), [](const elf_function& a, const elf_function& b) { return a.start < b.start; });
    return out;
}

std::string demangle(const std::string& name) {
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> d(abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status), &std::free);
    std::string text = status == 0 && d ? std::string(d.get()) : name;
    // GCC names a coroutine's body "f(f(args)::_Z...Frame*) [clone .actor]":
    // shown as "f(args) [coroutine]".
    constexpr std::string_view actor = " [clone .actor]";
    const auto open = text.find('(');
    const auto frame = text.rfind("::_Z");
    if (text.size() > actor.size() && text.compare(text.size() - actor.size(), actor.size(), actor) == 0 &&
        open != std::string::npos && frame != std::string::npos && frame > open) {
        return text.substr(open + 1, frame - open - 1) + " [coroutine]";
    }
    return text;
}

std::string hex(std::uintptr_t v) {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, 16);
    return "0x" + std::string(buf, r.ptr);
}

// The symbol tables of the loaded objects, by the name the dynamic linker
// gives them ("" is the program). Watchdog thread only. Read when the
// watchdog starts and again between scans when objects were loaded (never
// while a report is taken: the report opens no files, so a process at its
// descriptor limit is reported as well as any).
std::map<std::string, std::vector<elf_function>>& symbol_cache() {
    static auto* c = new std::map<std::string, std::vector<elf_function>>;
    return *c;
}

// Reads the symbol tables of objects loaded since the last call.
void load_new_symbols() {
    static unsigned long long seen_adds = ~0ull;
    struct walk {
        unsigned long long adds = 0;
        std::vector<std::string> names;
    } w;
    ::dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t size, void* arg) -> int {
            auto& w = *static_cast<walk*>(arg);
            if (size >= offsetof(dl_phdr_info, dlpi_adds) + sizeof info->dlpi_adds) w.adds = info->dlpi_adds;
            w.names.emplace_back(info->dlpi_name != nullptr ? info->dlpi_name : "");
            return 0;
        },
        &w);
    if (w.adds == seen_adds) return;
    seen_adds = w.adds;
    auto& cache = symbol_cache();
    for (const std::string& name : w.names) {
        if (cache.count(name) != 0) continue;
        // The vDSO has no file; the program is "" (read through /proc/self/exe).
        cache.emplace(name, name.empty() ? read_functions("/proc/self/exe")
                                         : (name.front() == '/' ? read_functions(name) : std::vector<elf_function>{}));
    }
}

// "function+0x1f", or "object+0x1234" where no symbol covers the address.
// `return_address`: the frame's address is after a call, so the call
// itself (one byte earlier) is what is looked up. Opens no file.
std::string describe_frame(void* frame, bool return_address) {
    const auto& cache = symbol_cache();
    const auto addr = reinterpret_cast<std::uintptr_t>(frame) - (return_address ? 1 : 0);
    Dl_info info{};
    link_map* lm = nullptr;
    if (::dladdr1(reinterpret_cast<void*>(addr), &info, reinterpret_cast<void**>(&lm), RTLD_DL_LINKMAP) == 0 ||
        lm == nullptr) {
        return hex(reinterpret_cast<std::uintptr_t>(frame));
    }
    static const std::vector<elf_function> none;
    const auto it = cache.find(lm->l_name != nullptr ? lm->l_name : "");
    const std::uintptr_t rel = addr - lm->l_addr;
    const auto& fns = it != cache.end() ? it->second : none;
    auto f = std::upper_bound(fns.begin(), fns.end(), rel,
                              [](std::uintptr_t a, const elf_function& e) { return a < e.start; });
    const std::uintptr_t offset = rel + (return_address ? 1 : 0);
    if (f != fns.begin()) {
        --f;
        if (rel < f->start + std::max<std::uintptr_t>(f->size, 1)) {
            return demangle(std::string(f->name, f->name_len)) + "+" + hex(offset - f->start);
        }
    }
    if (info.dli_sname != nullptr && info.dli_saddr != nullptr) {
        return demangle(info.dli_sname) + "+" + hex(reinterpret_cast<std::uintptr_t>(frame) -
                                                     reinterpret_cast<std::uintptr_t>(info.dli_saddr));
    }
    const char* object = info.dli_fname != nullptr ? std::strrchr(info.dli_fname, '/') : nullptr;
    return std::string(object ? object + 1 : (info.dli_fname ? info.dli_fname : "?")) + "+" + hex(offset);
}

// Asks the loop thread `thread` for its stack (the stall signal); false if
// it cannot be asked (the program handles the signal itself). Called with
// the loop registry's lock held: the loop is registered, so its thread is
// alive.
bool request_backtrace(unsigned long thread) {
    if (!g_handler_installed || thread == 0) return false;
    g_capture_target.store(thread, std::memory_order_release);
    g_capture.store(cap_requested, std::memory_order_release);
    if (::pthread_kill(static_cast<pthread_t>(thread), stall_signal()) != 0) {
        g_capture.store(cap_idle, std::memory_order_release);
        return false;
    }
    return true;
}

// The stack request_backtrace asked for, symbolized; "" if the thread did
// not answer within a bound. Takes no lock and opens no file.
std::string take_backtrace() {
    // The handler runs when the kernel next schedules the thread (at once,
    // unless the machine is very busy or a sanitizer defers the signal).
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (g_capture.load(std::memory_order_acquire) != cap_done) {
        if (std::chrono::steady_clock::now() >= give_up) {
            int expected = cap_requested;
            if (g_capture.compare_exchange_strong(expected, cap_idle, std::memory_order_acq_rel)) return {};
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    // Skip the handler's own frame and the kernel's signal trampoline; the
    // frame the signal interrupted holds the exact instruction, the others
    // return addresses.
    const int skip = std::min(g_frame_count, 2);
    std::string out;
    for (int i = skip; i < g_frame_count; ++i) {
        if (!out.empty()) out += " | ";
        out += "#" + std::to_string(i - skip) + " " + describe_frame(g_frames[i], i != skip);
    }
    g_capture.store(cap_idle, std::memory_order_release);
    return out;
}

void emit(const std::string& line) {
    auto& s = sink();
    std::lock_guard lock(s.mutex);
    if (s.fn) {
        try {
            s.fn(line);
        } catch (...) {
            // A sink that throws loses its line, not the watchdog.
        }
        return;
    }
    const std::string text = line + "\n";
    (void)!::write(STDERR_FILENO, text.data(), text.size());
}

struct watchdog_state {
    std::mutex mutex;
    std::condition_variable cv;
    struct entry {
        std::uint64_t id = 0;
        std::uint64_t progress = 0;
        std::chrono::steady_clock::time_point since{};
        bool reported = false;
    };
    std::unordered_map<loop_core*, entry> seen;  // watchdog thread only
};

// Replaced in a forked child (fork_child): the parent's watchdog thread is
// not there, and a condition variable it waited on is not safe to use.
std::atomic<watchdog_state*> g_watchdog{nullptr};

watchdog_state& watchdog() {
    static const bool made = [] {
        g_watchdog.store(new watchdog_state, std::memory_order_release);
        return true;
    }();
    (void)made;
    return *g_watchdog.load(std::memory_order_acquire);
}

// Whether this process has its watchdog thread, and whether a loop made
// starts it (under loops().mutex). A forked child has none until it calls
// set_stall_threshold: a fork is often followed by exec, and a thread
// started in the child of a threaded process is what some tools refuse
// (ThreadSanitizer's die_after_fork).
bool g_watchdog_running = false;
bool g_watchdog_auto = true;

// One scan: the loops are looked at under the registry's lock, and the
// first newly stalled one has its stack asked for there (its thread is
// alive while it is registered); the lock is let go before the stack is
// awaited, symbolized and logged, so a fork() or a loop made or destroyed
// meanwhile waits for nothing slow. Another loop stalled in the same scan
// is reported at the next.
void scan(std::chrono::milliseconds threshold) {
    auto& w = watchdog();
    std::string head;
    bool asked = false;
    {
        auto& r = loops();
        std::lock_guard lock(r.mutex);
        const auto now = std::chrono::steady_clock::now();
        std::unordered_map<loop_core*, watchdog_state::entry> next;
        for (loop_core* c : r.loops) {
            stall_watch& sw = c->watch();
            const bool busy = sw.busy.load(std::memory_order_relaxed);
            const std::uint64_t progress = sw.progress.load(std::memory_order_relaxed);
            const std::uint64_t id = c->owner().id();
            auto it = w.seen.find(c);
            watchdog_state::entry e = it != w.seen.end() && it->second.id == id ? it->second : watchdog_state::entry{};
            if (e.id != id || !busy || e.progress != progress) {
                e = {id, progress, now, false};
            } else if (!e.reported && head.empty() && now - e.since >= threshold) {
                e.reported = true;
                const auto held = std::chrono::duration_cast<std::chrono::milliseconds>(now - e.since);
                c->stats().stalls.fetch_add(1, std::memory_order_relaxed);
                asked = request_backtrace(sw.thread.load(std::memory_order_relaxed));
                head = "hop: stall: io_loop #" + std::to_string(id) + " (" + c->backend_label() +
                       ") has run one handler for " + std::to_string(held.count()) + " ms (threshold " +
                       std::to_string(threshold.count()) + " ms); backtrace: ";
            }
            next.emplace(c, e);
        }
        w.seen = std::move(next);
    }
    g_scans.fetch_add(1, std::memory_order_release);
    if (head.empty()) return;
    const std::string where = asked ? take_backtrace() : std::string();
    emit(head + (where.empty() ? std::string("(not available)") : where));
}

void watchdog_main(watchdog_state* state) {
    auto& w = *state;
    std::unique_lock lock(w.mutex);
    for (;;) {
        const auto threshold = std::chrono::milliseconds(g_threshold_ms.load(std::memory_order_acquire));
        if (threshold.count() == 0) {
            w.cv.wait(lock);
            continue;
        }
        const auto period = std::max(std::chrono::milliseconds(1), threshold / 4);
        w.cv.wait_for(lock, period);
        lock.unlock();
        load_new_symbols();  // between scans: never while a report is taken
        scan(threshold);
        lock.lock();
    }
}

// fork(): the registries' locks are taken before it and let go after, in
// the parent and the child, so the child finds none held by a thread it
// does not have. The child has no watchdog thread: it gets a fresh state,
// and its first loop starts its own.
void fork_prepare() noexcept {
    sink().mutex.lock();
    watchdog().mutex.lock();
    loops().mutex.lock();
    blocks().mutex.lock();
}
void fork_parent() noexcept {
    blocks().mutex.unlock();
    loops().mutex.unlock();
    watchdog().mutex.unlock();
    sink().mutex.unlock();
}
void fork_child() noexcept {
    blocks().mutex.unlock();
    loops().mutex.unlock();
    // The old state's mutex stays locked and its condition variable unused
    // (the parent's watchdog thread waited on it): left behind.
    if (auto* fresh = new (std::nothrow) watchdog_state) {
        g_watchdog.store(fresh, std::memory_order_release);
        g_watchdog_running = false;
        g_watchdog_auto = false;
    }  // else the child goes without a watchdog
    g_capture.store(cap_idle, std::memory_order_relaxed);
    sink().mutex.unlock();
}

// Starts the watchdog thread if the process has none: at its first loop,
// or (`asked`) from set_stall_threshold.
void start_watchdog(bool asked) {
    static std::once_flag once;
    std::call_once(once, [] {
        // backtrace() loads libgcc's unwinder at its first call, which is not
        // safe inside a signal handler: make that first call here.
        void* warm[2];
        (void)::backtrace(warm, 2);
        struct sigaction old {};
        if (::sigaction(stall_signal(), nullptr, &old) == 0 && old.sa_handler == SIG_DFL &&
            (old.sa_flags & SA_SIGINFO) == 0) {
            struct sigaction sa {};
            sa.sa_handler = &on_stall_signal;
            sa.sa_flags = SA_RESTART;
            sigemptyset(&sa.sa_mask);
            g_handler_installed = ::sigaction(stall_signal(), &sa, nullptr) == 0;
        }
        (void)watchdog();
        (void)sink();
        (void)blocks();
        ::pthread_atfork(&fork_prepare, &fork_parent, &fork_child);
    });
    auto& r = loops();
    {
        std::lock_guard lock(r.mutex);
        if (g_watchdog_running || !(g_watchdog_auto || asked)) return;
        g_watchdog_running = true;
    }
    // The symbol tables are read here, on the thread making the first loop,
    // before the program goes on: a program that lowers its descriptor
    // limit next (or uses its last descriptors) finds the files closed
    // again, and the watchdog opens none later unless libraries are loaded.
    if (g_threshold_ms.load(std::memory_order_acquire) != 0) load_new_symbols();
    try {
        std::thread(&watchdog_main, &watchdog()).detach();
    } catch (const std::system_error&) {
        // No thread for the watchdog: stalls go unreported.
        std::lock_guard lock(r.mutex);
        g_watchdog_running = false;
    }
}
}  // namespace

std::uint64_t stall_scans() noexcept { return g_scans.load(std::memory_order_acquire); }

}  // namespace hop::detail

namespace hop {

void set_stall_threshold(std::chrono::milliseconds threshold) {
    if (threshold.count() < 0) {
        throw std::invalid_argument("hop::set_stall_threshold: threshold " + std::to_string(threshold.count()) +
                                    " ms is negative (0: off)");
    }
    auto& w = detail::watchdog();
    {
        std::lock_guard lock(w.mutex);
        detail::g_threshold_ms.store(threshold.count(), std::memory_order_release);
    }
    w.cv.notify_all();
    if (threshold.count() != 0) detail::start_watchdog(true);
}

std::chrono::milliseconds stall_threshold() noexcept {
    return std::chrono::milliseconds(detail::g_threshold_ms.load(std::memory_order_acquire));
}

void set_stall_log(std::function<void(std::string_view line)> fn) {
    auto& s = detail::sink();
    std::lock_guard lock(s.mutex);
    s.fn = std::move(fn);
}

namespace metrics {

namespace {

// Every kind, with its label: io_kind::name is the call's name for messages,
// and two kinds make the same call (sendmsg), so the label is its own.
struct labelled_kind {
    const detail::io_kind* kind;
    const char* label;
};
const labelled_kind all_kinds[] = {
    {&detail::io_kind_poll, "wait"},          {&detail::io_kind_recv, "recv"},
    {&detail::io_kind_send, "send"},          {&detail::io_kind_accept, "accept"},
    {&detail::io_kind_connect, "connect"},    {&detail::io_kind_recvmsg, "recvmsg"},
    {&detail::io_kind_sendmsg, "sendmsg"},    {&detail::io_kind_send_gathered, "send_gathered"},
    {&detail::io_kind_read_at, "read"},       {&detail::io_kind_write_at, "write"},
    {&detail::io_kind_fsync, "fsync"}};
static_assert(std::size(all_kinds) == detail::io_kind_slots);

histogram read_histogram(const detail::thread_histogram& t) {
    histogram h;
    h.bounds.assign(detail::duration_bounds.begin(), detail::duration_bounds.end());
    for (const auto& b : t.buckets) h.counts.push_back(b.get());
    h.sum = static_cast<double>(t.sum_ns.get()) / 1e9;
    // The count is the buckets' sum: each read alone, the two could differ
    // by an observation in progress, and Prometheus wants them equal.
    for (std::uint64_t c : h.counts) h.count += c;
    return h;
}

loop_figures read_loop(detail::loop_core& c) {
    detail::loop_stats& s = c.stats();
    loop_figures f;
    f.id = c.owner().id();
    f.backend = c.backend_label();
    f.turns = s.turns.get();
    f.busy_seconds = static_cast<double>(s.busy_ns.get()) / 1e9;
    f.tasks_resumed = s.handlers.get();
    f.remote_posts = s.remote_posts.get();
    f.sleeps = s.sleeps.get();
    f.wakes = s.wakes.get();
    f.timers_armed = s.timers.get();
    f.stalls = s.stalls.load(std::memory_order_relaxed);
    for (const labelled_kind& k : all_kinds) {
        // Completed is read first: read later, started is at least as large.
        const std::uint64_t done = s.io_completed[k.kind->metric_slot].get();
        const std::uint64_t started = s.io_started[k.kind->metric_slot].get();
        f.in_flight.push_back({k.label, started > done ? started - done : 0});
    }
    return f;
}

}  // namespace

snapshot read() {
    snapshot s;
    {
        auto& r = detail::loops();
        std::lock_guard lock(r.mutex);
        for (detail::loop_core* c : r.loops) s.loops.push_back(read_loop(*c));
    }
    std::sort(s.loops.begin(), s.loops.end(), [](const loop_figures& a, const loop_figures& b) { return a.id < b.id; });

    const detail::blocking_pool_counts b = detail::read_blocking_pool();
    s.blocking_pool = {b.threads, b.queued, b.running, b.jobs};

    detail::thread_block total;
    {
        auto& r = detail::blocks();
        std::lock_guard lock(r.mutex);
        r.retired.add_to(total);
        for (const detail::thread_block* t : r.live) t->add_to(total);
    }
    auto get = [&](detail::counter c) { return total.counters[static_cast<std::size_t>(c)].get(); };
    http_server_figures& h = s.http_server;
    h.connections_accepted = get(detail::counter::http_accepted);
    const std::uint64_t closed = get(detail::counter::http_closed);
    h.connections_open = h.connections_accepted > closed ? h.connections_accepted - closed : 0;
    for (unsigned i = 0; i < 5; ++i) {
        h.responses[i] = get(static_cast<detail::counter>(static_cast<unsigned>(detail::counter::http_1xx) + i));
    }
    const std::uint64_t started = get(detail::counter::http_handlers_started);
    const std::uint64_t ended = get(detail::counter::http_handlers_ended);
    h.active_handlers = started > ended ? started - ended : 0;
    h.bytes_received = get(detail::counter::http_bytes_in);
    h.bytes_sent = get(detail::counter::http_bytes_out);
    h.request_duration = read_histogram(total.histograms[static_cast<std::size_t>(detail::histogram_id::http_server)]);

    const detail::http_client_counts c = detail::read_http_clients();
    http_client_figures& hc = s.http_client;
    hc.connections_open = c.open;
    hc.connections_idle = c.idle;
    hc.connections_in_use = c.open > c.idle ? c.open - c.idle : 0;
    hc.requests_waiting = c.waiting;
    hc.connects = c.connects;
    hc.reused = c.reuses;
    hc.retried = c.retries;
    for (std::size_t k = 0; k < std::size(detail::client_error_kinds); ++k) {
        hc.errors.push_back({detail::client_error_kinds[k],
                             total.counters[static_cast<std::size_t>(detail::counter::client_error_first_) + k].get()});
    }
    hc.request_duration = read_histogram(total.histograms[static_cast<std::size_t>(detail::histogram_id::http_client)]);

    s.tls.client_handshakes = get(detail::counter::tls_handshakes_client);
    s.tls.server_handshakes = get(detail::counter::tls_handshakes_server);
    s.tls.client_resumed = get(detail::counter::tls_resumed_client);
    s.tls.server_resumed = get(detail::counter::tls_resumed_server);
    s.tls.client_failed = get(detail::counter::tls_failed_client);
    s.tls.server_failed = get(detail::counter::tls_failed_server);

    for (const detail::cpu_pool_counts& p : detail::read_cpu_pools()) {
        s.cpu_pools.push_back({p.id, p.threads, p.jobs, p.steals, p.parks, p.queued});
    }
    return s;
}

namespace {

std::string number(double v, std::chars_format format = std::chars_format::general) {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v, format);
    return std::string(buf, r.ptr);
}

class writer {
public:
    explicit writer(std::string& out) : m_out(out) {}

    void family(std::string_view name, std::string_view type, std::string_view help) {
        m_out.append("# HELP ").append(name).append(" ").append(help).append("\n");
        m_out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
    }
    void sample(std::string_view name, std::string_view labels, const std::string& value) {
        m_out.append(name);
        if (!labels.empty()) m_out.append("{").append(labels).append("}");
        m_out.append(" ").append(value).append("\n");
    }
    void sample(std::string_view name, std::string_view labels, std::uint64_t value) {
        sample(name, labels, std::to_string(value));
    }
    void histogram_family(std::string_view name, std::string_view help, const histogram& d) {
        family(name, "histogram", help);
        const std::string base(name);
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < d.counts.size(); ++i) {
            cumulative += d.counts[i];
            const std::string le =
                i < d.bounds.size() ? number(d.bounds[i], std::chars_format::fixed) : std::string("+Inf");
            sample(base + "_bucket", "le=\"" + le + "\"", cumulative);
        }
        sample(base + "_sum", "", number(d.sum));
        sample(base + "_count", "", d.count);
    }

private:
    std::string& m_out;
};

std::string loop_labels(const loop_figures& l) {
    return "loop=\"" + std::to_string(l.id) + "\",backend=\"" + l.backend + "\"";
}

template <class Get>
void per_loop(writer& w, const snapshot& s, std::string_view name, std::string_view type, std::string_view help,
              Get get) {
    w.family(name, type, help);
    for (const auto& l : s.loops) w.sample(name, loop_labels(l), get(l));
}

}  // namespace

std::string prometheus(const snapshot& s) {
    std::string out;
    out.reserve(4096 + s.loops.size() * 2048);
    writer w(out);
    per_loop(w, s, "hop_loop_turns_total", "counter", "Turns the io_loop has made (run, run_once, poll).",
             [](const loop_figures& l) { return l.turns; });
    per_loop(w, s, "hop_loop_busy_seconds_total", "counter", "Time the io_loop spent in turns, not asleep in the kernel.",
             [](const loop_figures& l) { return number(l.busy_seconds); });
    per_loop(w, s, "hop_loop_tasks_resumed_total", "counter",
             "Handlers the io_loop ran: coroutine resumptions, posted callables, fired timers.",
             [](const loop_figures& l) { return l.tasks_resumed; });
    per_loop(w, s, "hop_loop_remote_posts_total", "counter", "Work items posted to the io_loop from other threads.",
             [](const loop_figures& l) { return l.remote_posts; });
    per_loop(w, s, "hop_loop_sleeps_total", "counter", "Times the io_loop slept in the kernel.",
             [](const loop_figures& l) { return l.sleeps; });
    per_loop(w, s, "hop_loop_wakes_total", "counter", "Sleeps of the io_loop ended by a post from another thread.",
             [](const loop_figures& l) { return l.wakes; });
    per_loop(w, s, "hop_loop_stalls_total", "counter",
             "Handlers that held the io_loop longer than the stall threshold.",
             [](const loop_figures& l) { return l.stalls; });
    per_loop(w, s, "hop_loop_timers_armed", "gauge", "Timers armed on the io_loop.",
             [](const loop_figures& l) { return l.timers_armed; });
    w.family("hop_loop_operations_in_flight", "gauge", "Kernel operations started on the io_loop and not completed, by kind.");
    for (const auto& l : s.loops) {
        for (const auto& k : l.in_flight) {
            w.sample("hop_loop_operations_in_flight", loop_labels(l) + ",kind=\"" + k.kind + "\"", k.count);
        }
    }

    const blocking_pool_figures& b = s.blocking_pool;
    w.family("hop_blocking_pool_threads", "gauge", "Threads of the blocking pool.");
    w.sample("hop_blocking_pool_threads", "", b.threads);
    w.family("hop_blocking_pool_queued", "gauge", "Calls waiting for a thread of the blocking pool.");
    w.sample("hop_blocking_pool_queued", "", b.queued);
    w.family("hop_blocking_pool_running", "gauge", "Calls running on the blocking pool.");
    w.sample("hop_blocking_pool_running", "", b.running);
    w.family("hop_blocking_pool_jobs_total", "counter", "Calls the blocking pool has started.");
    w.sample("hop_blocking_pool_jobs_total", "", b.jobs);

    const http_server_figures& h = s.http_server;
    w.family("hop_http_server_connections_total", "counter", "Connections hop::http::server accepted.");
    w.sample("hop_http_server_connections_total", "", h.connections_accepted);
    w.family("hop_http_server_connections", "gauge", "Connections hop::http::server has open.");
    w.sample("hop_http_server_connections", "", h.connections_open);
    w.family("hop_http_server_requests_total", "counter", "Responses hop::http::server started, by status class.");
    for (unsigned i = 0; i < 5; ++i) {
        w.sample("hop_http_server_requests_total", "code=\"" + std::to_string(i + 1) + "xx\"", h.responses[i]);
    }
    w.family("hop_http_server_active_handlers", "gauge", "Request handlers running now.");
    w.sample("hop_http_server_active_handlers", "", h.active_handlers);
    w.family("hop_http_server_received_bytes_total", "counter", "Bytes hop::http::server read from clients.");
    w.sample("hop_http_server_received_bytes_total", "", h.bytes_received);
    w.family("hop_http_server_sent_bytes_total", "counter", "Bytes hop::http::server wrote to clients.");
    w.sample("hop_http_server_sent_bytes_total", "", h.bytes_sent);

    w.histogram_family("hop_http_server_request_duration_seconds",
                       "Time from a request handed to its handler to the response queued or written.",
                       h.request_duration);

    const http_client_figures& c = s.http_client;
    w.family("hop_http_client_connections", "gauge",
             "Connections of hop::http::client by state: in_use (connecting or carrying a request) or idle.");
    w.sample("hop_http_client_connections", "state=\"in_use\"", c.connections_in_use);
    w.sample("hop_http_client_connections", "state=\"idle\"", c.connections_idle);
    w.family("hop_http_client_requests_waiting", "gauge", "Requests of hop::http::client waiting for a connection slot.");
    w.sample("hop_http_client_requests_waiting", "", c.requests_waiting);
    w.family("hop_http_client_connects_total", "counter", "Connections hop::http::client made.");
    w.sample("hop_http_client_connects_total", "", c.connects);
    w.family("hop_http_client_reused_total", "counter", "Requests hop::http::client sent on a kept-alive connection.");
    w.sample("hop_http_client_reused_total", "", c.reused);
    w.family("hop_http_client_retried_total", "counter",
             "Idempotent requests hop::http::client resent after a stale kept-alive connection.");
    w.sample("hop_http_client_retried_total", "", c.retried);
    w.family("hop_http_client_errors_total", "counter", "Requests of hop::http::client that failed, by kind.");
    for (const auto& e : c.errors) w.sample("hop_http_client_errors_total", "kind=\"" + e.kind + "\"", e.count);
    w.histogram_family("hop_http_client_request_duration_seconds",
                       "Time from a request started to its response read (fetch) or its head read (open).",
                       c.request_duration);

    const tls_figures& t = s.tls;
    w.family("hop_tls_handshakes_total", "counter", "TLS handshakes completed, by side.");
    w.sample("hop_tls_handshakes_total", "side=\"client\"", t.client_handshakes);
    w.sample("hop_tls_handshakes_total", "side=\"server\"", t.server_handshakes);
    w.family("hop_tls_resumed_total", "counter", "TLS handshakes that resumed a session, by side.");
    w.sample("hop_tls_resumed_total", "side=\"client\"", t.client_resumed);
    w.sample("hop_tls_resumed_total", "side=\"server\"", t.server_resumed);
    w.family("hop_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by side.");
    w.sample("hop_tls_handshake_failures_total", "side=\"client\"", t.client_failed);
    w.sample("hop_tls_handshake_failures_total", "side=\"server\"", t.server_failed);

    auto pool_labels = [](const cpu_pool_figures& p) { return "pool=\"" + std::to_string(p.id) + "\""; };
    auto per_pool = [&](std::string_view name, std::string_view type, std::string_view help, auto get) {
        w.family(name, type, help);
        for (const auto& p : s.cpu_pools) w.sample(name, pool_labels(p), get(p));
    };
    per_pool("hop_cpu_pool_threads", "gauge", "Worker threads of the cpu_pool.",
             [](const cpu_pool_figures& p) { return p.threads; });
    per_pool("hop_cpu_pool_jobs_total", "counter", "Work items the cpu_pool's workers took from a queue and ran.",
             [](const cpu_pool_figures& p) { return p.jobs; });
    per_pool("hop_cpu_pool_steals_total", "counter", "Work items a worker of the cpu_pool stole from another's deque.",
             [](const cpu_pool_figures& p) { return p.steals; });
    per_pool("hop_cpu_pool_parks_total", "counter", "Times a worker of the cpu_pool found no work and slept.",
             [](const cpu_pool_figures& p) { return p.parks; });
    per_pool("hop_cpu_pool_queued", "gauge", "Work items queued on the cpu_pool (its deques and injection queues).",
             [](const cpu_pool_figures& p) { return p.queued; });
    return out;
}

std::string prometheus() { return prometheus(read()); }

void set_enabled(bool on) noexcept { detail::g_counting.store(on, std::memory_order_relaxed); }

bool enabled() noexcept { return detail::counting(); }

}  // namespace metrics

}  // namespace hop
