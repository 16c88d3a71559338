// Does multishot recv into a provided-buffer ring cut an io_uring echo
// server's system CPU per round trip (hop issue 10)?
//
// CONCLUSION (Linux 6.18.44, liburing 2.3, 2 cores shared with other work
// at load 4-10): NO. At 100 connections multishot recv into a provided-buffer
// ring does not measurably cut the server's CPU per round trip: single-shot
// (a) / multishot (b), user+sys, the per-round paired ratio's median over 9
// rounds, in five runs: 0.96, 0.99, 1.05, 0.94, 1.06 (above 1: (b) cheaper;
// spread within a run 0.6..2.1); with the client on the same thread and ring
// (INPROC): 1.05, 0.89, 1.06. SINGLE_ISSUER|DEFER_TASKRUN on top (b') is no
// better: 0.94, 0.91, 1.02, 1.13, 1.05 (INPROC 0.99, 0.98, 1.01). So ~0-5% at
// best, below what this machine can resolve, and not worth redesigning
// read_some.
//
// Why (reasoned, not profiled: this VM has no PMU and perf_event_paranoid is
// 2): per round trip the server does one recv and one send. Multishot saves
// only the recv's SQE, its first non-blocking try (-EAGAIN when the next
// message is not there yet) and the poll arm; it keeps the wakeup, the task work and
// the copy out of the socket. The send, which on loopback also runs the
// peer's TCP receive in softirq on the server's CPU, stays the bulk of
// ~2.4 us. The syscall is already amortised: ~50 round trips per
// io_uring_enter for (a) and (b) (~21 with DEFER_TASKRUN, still no dearer).
//
// Figures (SEPARATE, server process CPU, us per round trip, medians of 9
// rounds; five runs; the paired ratios in each run's table):
//   run   (a) raw single  (b) multishot   (c) hop io_uring  (d) Asio
//   1     2.83            2.47            4.34              9.50
//   2     2.40            2.38            2.67              9.02
//   3     2.90            3.01            2.71              9.90
//   4     2.59            3.25            3.91              9.74
//   5     2.39            2.30            2.78             10.60
// (min..max within a run: e.g. (a) 2.12..3.09, (b) 2.02..3.46; system CPU is
// 97-99% of it for (a)/(b), ~90% for hop, ~75% for Asio.) Paired per round,
// hop uses 1.07-1.43x raw (a)'s CPU (+0.2-0.3 us of user time) and
// 3.0-3.7x less than Asio; raw (a) 3.7-4.0x less than Asio. Round trips/s
// (client's wall clock) varied 45k-235k with the load, equally for a and b.
//
// What adopting it in hop's read_some would cost, for that ~0-5%:
//   - a copy from the ring buffer into the caller's buffer (what (b) does
//     here; 64 B is nothing, bulk reads pay one more pass over every byte),
//     or a new read API lending loop-owned buffers (both backends; epoll
//     would emulate it);
//   - per loop a registered buffer group: entries x size pinned (256 x 4 KiB
//     = 1 MiB here) plus the ring itself; too few and connections end their
//     multishot with -ENOBUFS and need parking and re-arming (--buffers 4
//     exercises that path: it works, at many more completions);
//   - a multishot that outlives each read_some: per stream a queue of
//     filled buffers (with an offset for a caller's buffer smaller than the
//     data), data read from the socket while nobody reads (the TCP window
//     no longer pushes back: one slow reader can drain the group for all),
//     and close/cancel must cancel the multishot and reap its last CQE
//     before the stream's state goes; read_some's cancellation would no
//     longer cancel the kernel operation.
// INPROC is echo_bench's setup (client + server CPU): (a) 4.16-5.44 us.
//
// The work is echo_bench's "hundred" case: 100 TCP connections over
// 127.0.0.1, TCP_NODELAY on every socket, each ping-ponging 64-byte messages
// (the client sends 64 bytes, waits for all 64 back, checks them, repeats).
// Unlike echo_bench the client runs in its OWN process, so the server's
// getrusage covers the server alone; the client is the same program for every
// server: raw liburing, one IORING_OP_SEND and one single-shot IORING_OP_RECV
// per message, on a ring with hop's flags. Server variants (one thread each):
//
//   (a)  raw liburing: one single-shot IORING_OP_RECV per read into the
//        connection's 4 KiB buffer, then IORING_OP_SEND of what came, then the
//        next recv once the send has completed (what hop's read_some +
//        write_all do today). Ring flags as hop's: SUBMIT_ALL | COOP_TASKRUN.
//   (a') (a) on a SINGLE_ISSUER | DEFER_TASKRUN ring.
//   (b)  raw liburing: one multishot recv per connection
//        (io_uring_prep_recv_multishot, IOSQE_BUFFER_SELECT) into a
//        provided-buffer ring (io_uring_register_buf_ring; 4 KiB buffers,
//        --buffers of them, 256 by default). Each completion's bytes are
//        copied into the connection's own buffer and the ring buffer is given
//        back at once — what a read_some(caller's buffer) built on it would
//        do — then sent from there. A recv that completes while the
//        connection's send is still in flight waits its turn (as data would
//        wait for hop's next read_some). A multishot that ends (no
//        IORING_CQE_F_MORE) is re-armed; one that ended with -ENOBUFS is
//        re-armed after the next batch has given buffers back.
//   (b') (b) on a SINGLE_ISSUER | DEFER_TASKRUN ring.
//   (c)  hop's own io_uring backend: tcp_listener + tcp_stream, read_some
//        into a 4 KiB buffer, write_all (what a hop user writes).
//   (d)  standalone Asio (epoll reactor), async_read_some + async_write on
//        one io_context: the reference users compare against.
//
// Each server runs in its own child process (which starts the client as its
// own child); the variants run interleaved (a a' b b' c d, a a' ...) so the
// load from other work on the machine falls on all alike; figures are medians
// over the rounds with the min..max spread. Server CPU is the getrusage delta
// from the "go" (all connections accepted, every session waiting in its first
// read) to the last session's end of stream; round trips/s is the client's.
// Ratios are taken per round (runs next to each other in time) and their
// median shown: the load changes less within a round than across rounds.
// The INPROC section runs (a)-(b') again with the client on the server's
// thread and ring (echo_bench's setup): its CPU is client + server.
// getrusage's user/sys split comes from tick sampling (HZ=250 here), so it is
// coarse; user+sys is exact.
//
//   uring_recv_bench [--quick] [--rounds N] [--buffers N] [--only separate|inproc]

#include "common.hpp"

#include <hop/hop.hpp>

#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/utsname.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include <array>
#include <csignal>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace {

constexpr std::size_t msg_size = 64;
constexpr unsigned buf_size = 4096;  // every server's receive buffer
constexpr int backlog = 1024;
constexpr unsigned watchdog_seconds = 120;
constexpr unsigned hop_flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
constexpr unsigned defer_flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;

using msg = std::array<char, msg_size>;

msg pattern(std::size_t round, std::size_t conn) {
    msg m;
    for (std::size_t i = 0; i < msg_size; ++i) m[i] = static_cast<char>('a' + (round + conn + i) % 26);
    return m;
}

[[noreturn]] void throw_errno(int err, const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(err < 0 ? -err : err));
}

extern "C" void on_watchdog(int) {
    static const char text[] = "uring_recv_bench: a side has not finished after 120 s: it is stuck\n";
    (void)!::write(2, text, sizeof text - 1);
    ::_exit(3);
}

// The children end with _exit (no atexit handlers, no second flush of
// stdio): under ASan, check them for leaks first (a leak kills the child, so
// its run fails).
void leak_check_before_exit() {
#if defined(__SANITIZE_ADDRESS__)
    __lsan_do_leak_check();
#endif
}

void start_watchdog() {
    std::signal(SIGALRM, on_watchdog);
    ::alarm(watchdog_seconds);
}

void set_nodelay(int fd) {
    int one = 1;
    if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) throw_errno(errno, "setsockopt(TCP_NODELAY)");
}

void write_all_fd(int fd, const void* p, std::size_t n, const char* what) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
        ssize_t w = ::write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) throw_errno(errno, what);
        c += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Reads exactly n bytes; false at end of file before any byte.
bool read_all_fd(int fd, void* p, std::size_t n, const char* what) {
    char* c = static_cast<char*>(p);
    std::size_t got = 0;
    while (got < n) {
        ssize_t r = ::read(fd, c + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw_errno(errno, what);
        if (r == 0) {
            if (got == 0) return false;
            throw std::runtime_error(std::string(what) + ": short read");
        }
        got += static_cast<std::size_t>(r);
    }
    return true;
}

using bench::seconds_between;
using bench::timed;

// An io_uring, exited on scope end.
class ring_owner {
public:
    ring_owner(unsigned entries, unsigned flags, const char* who) {
        io_uring_params p{};
        p.flags = flags;
        int r = io_uring_queue_init_params(entries, &m_ring, &p);
        if (r < 0) {
            std::string f = (flags & IORING_SETUP_DEFER_TASKRUN) ? "SUBMIT_ALL|SINGLE_ISSUER|DEFER_TASKRUN (Linux 6.1+)"
                                                                  : "SUBMIT_ALL|COOP_TASKRUN (Linux 5.19+)";
            throw_errno(r, std::string(who) + ": io_uring_queue_init_params with " + f);
        }
    }
    ~ring_owner() { io_uring_queue_exit(&m_ring); }
    ring_owner(const ring_owner&) = delete;
    ring_owner& operator=(const ring_owner&) = delete;
    io_uring* get() { return &m_ring; }

private:
    io_uring m_ring{};
};

io_uring_sqe* next_sqe(io_uring* ring) {
    io_uring_sqe* s = io_uring_get_sqe(ring);
    if (s == nullptr) {
        int r = io_uring_submit(ring);
        if (r < 0) throw_errno(r, "io_uring_submit");
        s = io_uring_get_sqe(ring);
        if (s == nullptr) throw std::runtime_error("io_uring: no free SQE after a submit");
    }
    return s;
}

// user_data: connection index << 8 | side << 4 | operation (a client and a
// server may share one ring: the in-process section).
enum op : std::uint64_t { op_recv = 1, op_send = 2 };
enum side : std::uint64_t { client_side = 0, server_side = 1 };
std::uint64_t tag(std::size_t conn, side sd, op o) { return static_cast<std::uint64_t>(conn) << 8 | sd << 4 | o; }
std::size_t conn_of(const io_uring_cqe& c) { return static_cast<std::size_t>(c.user_data >> 8); }
side side_of(const io_uring_cqe& c) { return static_cast<side>((c.user_data >> 4) & 0xf); }
op op_of(const io_uring_cqe& c) { return static_cast<op>(c.user_data & 0xf); }

// Waits for at least one completion and hands every ready one to `fn`.
template <class Fn>
void reap(io_uring* ring, Fn&& fn) {
    int r = io_uring_submit_and_wait(ring, 1);
    if (r < 0 && r != -EINTR) throw_errno(r, "io_uring_submit_and_wait");
    std::array<io_uring_cqe*, 128> cqes;
    for (;;) {
        unsigned n = io_uring_peek_batch_cqe(ring, cqes.data(), static_cast<unsigned>(cqes.size()));
        if (n == 0) break;
        for (unsigned i = 0; i < n; ++i) fn(*cqes[i]);
        io_uring_cq_advance(ring, n);
    }
}

// ============================================================================
// The client: the same for every server. Raw liburing in its own process.
// ============================================================================

struct client_report {
    double wall = 0;
    double user = 0;
    double sys = 0;
    std::uint64_t check = 0;
    bool ok = false;
    char error[200] = {};
};

struct client_conn {
    int fd = -1;
    std::size_t round = 0;
    std::size_t got = 0;
    msg out{};
    msg in{};
};

int connect_loopback(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw_errno(errno, "client socket");
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        int e = errno;
        ::close(fd);
        throw_errno(e, "client connect to 127.0.0.1:" + std::to_string(port));
    }
    set_nodelay(fd);
    return fd;
}

// The client's connections and what each completion does to them.
class raw_client {
public:
    raw_client(std::uint16_t port, std::size_t conns, std::size_t rounds) : m_cs(conns), m_rounds(rounds) {
        for (auto& c : m_cs) c.fd = connect_loopback(port);
    }
    ~raw_client() { close_all(); }
    raw_client(const raw_client&) = delete;
    raw_client& operator=(const raw_client&) = delete;

    void start(io_uring* ring) {
        for (std::size_t i = 0; i < m_cs.size(); ++i) start_round(ring, i);
    }
    bool finished() const { return m_done == m_cs.size(); }
    std::uint64_t check() const { return m_check; }
    void close_all() {
        for (auto& c : m_cs) {
            if (c.fd >= 0) ::close(c.fd);
            c.fd = -1;
        }
    }

    void on_cqe(io_uring* ring, const io_uring_cqe& cqe) {
        const std::size_t i = conn_of(cqe);
        client_conn& c = m_cs[i];
        if (op_of(cqe) == op_send) {
            if (cqe.res != static_cast<int>(msg_size)) {
                if (cqe.res < 0) throw_errno(cqe.res, "client send");
                throw std::runtime_error("client: short send of " + std::to_string(cqe.res) + " bytes");
            }
            return;
        }
        if (cqe.res < 0) throw_errno(cqe.res, "client recv");
        if (cqe.res == 0) throw std::runtime_error("client: the server closed a connection early");
        c.got += static_cast<std::size_t>(cqe.res);
        if (c.got < msg_size) {
            io_uring_sqe* s = next_sqe(ring);
            io_uring_prep_recv(s, c.fd, c.in.data() + c.got, static_cast<unsigned>(msg_size - c.got), 0);
            io_uring_sqe_set_data64(s, tag(i, client_side, op_recv));
            return;
        }
        if (c.in != c.out) throw std::runtime_error("client: the echo differs from what was sent");
        m_check += static_cast<unsigned char>(c.in[0]) + static_cast<unsigned char>(c.in[msg_size - 1]);
        if (++c.round == m_rounds) {
            ++m_done;
        } else {
            start_round(ring, i);
        }
    }

private:
    // The send and the recv for the echo go in together.
    void start_round(io_uring* ring, std::size_t i) {
        client_conn& c = m_cs[i];
        c.out = pattern(c.round, i);
        c.got = 0;
        io_uring_sqe* s = next_sqe(ring);
        io_uring_prep_send(s, c.fd, c.out.data(), msg_size, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(s, tag(i, client_side, op_send));
        s = next_sqe(ring);
        io_uring_prep_recv(s, c.fd, c.in.data(), msg_size, 0);
        io_uring_sqe_set_data64(s, tag(i, client_side, op_recv));
    }

    std::vector<client_conn> m_cs;
    std::size_t m_rounds;
    std::size_t m_done = 0;
    std::uint64_t m_check = 0;
};

// The client in its own process: connects, waits for the server's go, runs.
client_report run_client(std::uint16_t port, std::size_t conns, std::size_t rounds, int from_server) {
    raw_client cl(port, conns, rounds);
    ring_owner ro(1024, hop_flags, "client");
    io_uring* ring = ro.get();
    char go = 0;
    if (!read_all_fd(from_server, &go, 1, "client: wait for go")) throw std::runtime_error("client: the server went away");
    client_report rep;
    const timed t0 = timed::now();
    cl.start(ring);
    while (!cl.finished()) reap(ring, [&](const io_uring_cqe& cqe) { cl.on_cqe(ring, cqe); });
    const timed t1 = timed::now();
    cl.close_all();
    rep.check = cl.check();
    rep.wall = seconds_between(t0, t1);
    rep.user = t1.cpu.user - t0.cpu.user;
    rep.sys = t1.cpu.system - t0.cpu.system;
    rep.ok = true;
    return rep;
}

// ============================================================================
// The server's side of the control pipes to its client.
// ============================================================================

struct control {
    int to_client = -1;
    void send_port(std::uint16_t port) { write_all_fd(to_client, &port, sizeof port, "server: send the port"); }
    void go() { write_all_fd(to_client, "g", 1, "server: send go"); }
};

// What the server measured.
struct server_figures {
    double user = 0;
    double sys = 0;
    std::uint64_t rearms = 0;  // multishot recvs re-armed after they ended
    std::uint64_t nobufs = 0;  // ... of which ended with -ENOBUFS
    std::uint64_t multishot_cqes = 0;
    std::uint64_t enters = 0;  // io_uring_submit_and_wait calls in the timed part
};

server_figures figures(const timed& t0, const timed& t1) {
    server_figures f;
    f.user = t1.cpu.user - t0.cpu.user;
    f.sys = t1.cpu.system - t0.cpu.system;
    return f;
}

// ============================================================================
// (a) / (b): raw liburing servers
// ============================================================================

// A provided-buffer ring (group 0) of `entries` buffers of buf_size bytes.
// liburing 2.3 has no io_uring_setup_buf_ring (2.4): the ring is mmap'd
// (page-aligned, as the kernel wants) and registered by hand.
class buffer_ring {
public:
    buffer_ring(io_uring* ring, unsigned entries) : m_ring(ring), m_entries(entries), m_data(std::size_t{entries} * buf_size) {
        m_map_len = entries * sizeof(io_uring_buf);
        void* p = ::mmap(nullptr, m_map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw_errno(errno, "mmap for the buffer ring");
        m_br = static_cast<io_uring_buf_ring*>(p);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<std::uintptr_t>(p);
        reg.ring_entries = entries;
        reg.bgid = 0;
        int r = io_uring_register_buf_ring(ring, &reg, 0);
        if (r < 0) {
            ::munmap(p, m_map_len);
            throw_errno(r, "io_uring_register_buf_ring (provided-buffer rings need Linux 5.19+)");
        }
        io_uring_buf_ring_init(m_br);
        for (unsigned i = 0; i < entries; ++i) {
            io_uring_buf_ring_add(m_br, buffer(i), buf_size, static_cast<unsigned short>(i),
                                  io_uring_buf_ring_mask(entries), static_cast<int>(i));
        }
        io_uring_buf_ring_advance(m_br, static_cast<int>(entries));
    }
    ~buffer_ring() {
        io_uring_unregister_buf_ring(m_ring, 0);
        ::munmap(m_br, m_map_len);
    }
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    char* buffer(unsigned bid) { return m_data.data() + std::size_t{bid} * buf_size; }
    void give_back(unsigned bid) {
        io_uring_buf_ring_add(m_br, buffer(bid), buf_size, static_cast<unsigned short>(bid),
                              io_uring_buf_ring_mask(m_entries), 0);
        io_uring_buf_ring_advance(m_br, 1);
    }

private:
    io_uring* m_ring;
    unsigned m_entries;
    std::vector<char> m_data;
    io_uring_buf_ring* m_br = nullptr;
    std::size_t m_map_len = 0;
};

struct raw_conn {
    int fd = -1;
    std::unique_ptr<char[]> buf = std::make_unique<char[]>(buf_size);
    unsigned send_len = 0;  // bytes of buf being sent
    unsigned sent = 0;
    bool sending = false;
    bool eof = false;
    std::deque<std::pair<unsigned, unsigned>> waiting;  // (buffer id, length) received during a send
};

// A listening socket on 127.0.0.1 at a free port, closed by close() or on
// scope end.
class loopback_listener {
public:
    loopback_listener() {
        m_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (m_fd < 0) throw_errno(errno, "server socket");
        int one = 1;
        ::setsockopt(m_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof a;
        if (::bind(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_fd, backlog) != 0 ||
            ::getsockname(m_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
            int e = errno;
            close();
            throw_errno(e, "server bind/listen on 127.0.0.1:0");
        }
        m_port = ntohs(a.sin_port);
    }
    ~loopback_listener() { close(); }
    loopback_listener(const loopback_listener&) = delete;
    loopback_listener& operator=(const loopback_listener&) = delete;

    int fd() const { return m_fd; }
    std::uint16_t port() const { return m_port; }
    void close() {
        if (m_fd >= 0) ::close(m_fd);
        m_fd = -1;
    }

private:
    int m_fd = -1;
    std::uint16_t m_port = 0;
};

// The raw echo server's connections and what each completion does to them.
class raw_server {
public:
    // Accepts `conns` connections from `lfd`; `multishot`: into `buffers`
    // provided buffers of a ring registered on `ring`.
    raw_server(io_uring* ring, int lfd, std::size_t conns, bool multishot, unsigned buffers)
        : m_ring(ring), m_cs(conns), m_multishot(multishot) {
        for (auto& c : m_cs) {
            c.fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
            if (c.fd < 0) throw_errno(errno, "server accept4");
            set_nodelay(c.fd);
        }
        if (multishot) m_br = std::make_unique<buffer_ring>(ring, buffers);
    }
    ~raw_server() {
        for (auto& c : m_cs) {
            if (c.fd >= 0) ::close(c.fd);
        }
    }
    raw_server(const raw_server&) = delete;
    raw_server& operator=(const raw_server&) = delete;

    void start() {
        for (std::size_t i = 0; i < m_cs.size(); ++i) arm_recv(i);
    }
    bool finished() const { return m_ended == m_cs.size(); }
    const server_figures& counts() const { return m_f; }

    void on_cqe(const io_uring_cqe& cqe) {
        const std::size_t i = conn_of(cqe);
        raw_conn& c = m_cs[i];
        if (op_of(cqe) == op_send) {
            if (cqe.res < 0) throw_errno(cqe.res, "server send");
            c.sent += static_cast<unsigned>(cqe.res);
            if (c.sent < c.send_len) {
                send_rest(i);
                return;
            }
            c.sending = false;
            if (!m_multishot) {
                arm_recv(i);
            } else if (!c.waiting.empty()) {
                auto [bid, len] = c.waiting.front();
                c.waiting.pop_front();
                consume(i, bid, len);
            } else if (c.eof) {
                finish(i);
            }
            return;
        }
        // A recv.
        if (!m_multishot) {
            if (cqe.res < 0) throw_errno(cqe.res, "server recv");
            if (cqe.res == 0) {
                finish(i);
            } else {
                start_send(i, static_cast<unsigned>(cqe.res));
            }
            return;
        }
        ++m_f.multishot_cqes;
        const bool more = (cqe.flags & IORING_CQE_F_MORE) != 0;
        if (cqe.res > 0) {
            if (!(cqe.flags & IORING_CQE_F_BUFFER)) throw std::runtime_error("server: a multishot recv came without a buffer");
            const unsigned bid = cqe.flags >> IORING_CQE_BUFFER_SHIFT;
            if (c.sending) {
                c.waiting.emplace_back(bid, static_cast<unsigned>(cqe.res));
            } else {
                consume(i, bid, static_cast<unsigned>(cqe.res));
            }
            if (!more) {
                ++m_f.rearms;
                arm_recv(i);
            }
        } else if (cqe.res == 0) {
            c.eof = true;
            if (!c.sending && c.waiting.empty()) finish(i);
        } else if (cqe.res == -ENOBUFS) {
            ++m_f.rearms;
            ++m_f.nobufs;
            m_parked.push_back(i);
        } else if (cqe.res == -EINVAL) {
            throw std::runtime_error("server: multishot recv refused (-EINVAL): it needs Linux 6.0+");
        } else {
            throw_errno(cqe.res, "server multishot recv");
        }
    }

    // After a batch of completions has given its buffers back: the
    // multishots that ran out of buffers go again.
    void after_batch() {
        for (std::size_t i : m_parked) arm_recv(i);
        m_parked.clear();
    }

private:
    void arm_recv(std::size_t i) {
        io_uring_sqe* s = next_sqe(m_ring);
        if (m_multishot) {
            io_uring_prep_recv_multishot(s, m_cs[i].fd, nullptr, 0, 0);
            s->flags |= IOSQE_BUFFER_SELECT;
            s->buf_group = 0;
        } else {
            io_uring_prep_recv(s, m_cs[i].fd, m_cs[i].buf.get(), buf_size, 0);
        }
        io_uring_sqe_set_data64(s, tag(i, server_side, op_recv));
    }
    void send_rest(std::size_t i) {
        raw_conn& c = m_cs[i];
        io_uring_sqe* s = next_sqe(m_ring);
        io_uring_prep_send(s, c.fd, c.buf.get() + c.sent, c.send_len - c.sent, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(s, tag(i, server_side, op_send));
    }
    void start_send(std::size_t i, unsigned len) {
        m_cs[i].send_len = len;
        m_cs[i].sent = 0;
        m_cs[i].sending = true;
        send_rest(i);
    }
    // Multishot: what read_some(caller's buffer) would do with a completion.
    void consume(std::size_t i, unsigned bid, unsigned len) {
        std::memcpy(m_cs[i].buf.get(), m_br->buffer(bid), len);
        m_br->give_back(bid);
        start_send(i, len);
    }
    void finish(std::size_t i) {
        ::close(m_cs[i].fd);
        m_cs[i].fd = -1;
        ++m_ended;
    }

    io_uring* m_ring;
    std::vector<raw_conn> m_cs;
    bool m_multishot;
    std::unique_ptr<buffer_ring> m_br;
    std::vector<std::size_t> m_parked;  // multishots that ended with -ENOBUFS
    std::size_t m_ended = 0;
    server_figures m_f;
};

// A raw server's figures: the CPU from t0 to t1, what `srv` counted, and
// `enters` (its io_uring_submit_and_wait calls in between).
server_figures raw_figures(const raw_server& srv, const timed& t0, const timed& t1, std::uint64_t enters) {
    server_figures out = figures(t0, t1);
    out.rearms = srv.counts().rearms;
    out.nobufs = srv.counts().nobufs;
    out.multishot_cqes = srv.counts().multishot_cqes;
    out.enters = enters;
    return out;
}

// (a) / (b) as a server process: serves a client in another process.
server_figures run_raw_server(bool multishot, unsigned ring_flags, std::size_t conns, unsigned buffers, control& ctl) {
    loopback_listener lis;
    ctl.send_port(lis.port());
    ring_owner ro(1024, ring_flags, "server");
    io_uring* ring = ro.get();
    raw_server srv(ring, lis.fd(), conns, multishot, buffers);
    lis.close();
    srv.start();
    ctl.go();
    std::uint64_t enters = 0;
    const timed t0 = timed::now();
    while (!srv.finished()) {
        ++enters;
        reap(ring, [&](const io_uring_cqe& cqe) { srv.on_cqe(cqe); });
        srv.after_batch();
    }
    const timed t1 = timed::now();
    return raw_figures(srv, t0, t1, enters);
}

// (a) / (b) with the client in the same process, on the same thread and the
// same ring (echo_bench's setup): the figures are client + server.
server_figures run_raw_inproc(bool multishot, unsigned ring_flags, std::size_t conns, std::size_t rounds,
                              unsigned buffers, std::uint64_t* check, double* wall) {
    loopback_listener lis;
    ring_owner ro(1024, ring_flags, "in-process");
    io_uring* ring = ro.get();
    raw_client cl(lis.port(), conns, rounds);
    raw_server srv(ring, lis.fd(), conns, multishot, buffers);
    lis.close();
    srv.start();
    std::uint64_t enters = 0;
    const timed t0 = timed::now();
    cl.start(ring);
    bool closed = false;
    while (!srv.finished()) {
        ++enters;
        reap(ring, [&](const io_uring_cqe& cqe) {
            if (side_of(cqe) == client_side) {
                cl.on_cqe(ring, cqe);
            } else {
                srv.on_cqe(cqe);
            }
        });
        srv.after_batch();
        if (!closed && cl.finished()) {
            *wall = seconds_between(t0, timed::now());
            cl.close_all();
            closed = true;
        }
    }
    const timed t1 = timed::now();
    *check = cl.check();
    return raw_figures(srv, t0, t1, enters);
}

// ============================================================================
// (c) hop's io_uring tcp_stream server
// ============================================================================

using bench::hop_state;

hop::task<void> hop_session(hop::tcp_stream s, hop_state* st) {
    return bench::hop_echo_session<buf_size>(std::move(s), st);
}

// Once every session waits in its first read: tells the client to go, waits
// for the last session's end, and returns the CPU used in between. `Task` is
// the side's coroutine type (hop::task or asio::awaitable), `State` its
// bench::echo_state. @throws std::runtime_error for a session's error.
template <class Task, class State>
Task timed_sessions(State* st, control* ctl) {
    co_await st->all_waiting.wait();
    ctl->go();
    const timed t0 = timed::now();
    co_await st->all_ended.wait();
    const timed t1 = timed::now();
    st->check();
    co_return figures(t0, t1);
}

hop::task<server_figures> hop_server(hop::io_loop* loop, std::size_t conns, control* ctl) {
    hop_state st;
    st.sessions = conns;
    hop::tcp_listener lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = backlog});
    ctl->send_port(lis.local_endpoint().port());
    for (std::size_t i = 0; i < conns; ++i) {
        hop::tcp_stream s = co_await lis.accept();
        (void)loop->spawn(hop_session(std::move(s), &st));
    }
    co_return co_await timed_sessions<hop::task<server_figures>>(&st, ctl);
}

server_figures run_hop_server(std::size_t conns, control& ctl) {
    return bench::run_on_loop(hop::backend::io_uring,
                              [conns, &ctl](hop::io_loop* loop) { return hop_server(loop, conns, &ctl); });
}

// ============================================================================
// (d) Asio's server
// ============================================================================

using asio::ip::tcp;

using bench::asio_event;
using bench::asio_state;

asio::awaitable<void> asio_session(tcp::socket s, asio_state* st) {
    return bench::asio_echo_session<buf_size>(std::move(s), st);
}

asio::awaitable<server_figures> asio_server(asio::io_context* ctx, std::size_t conns, control* ctl) {
    asio_state st(*ctx);
    st.sessions = conns;
    tcp::acceptor acc(*ctx);
    tcp::endpoint ep(asio::ip::address_v4::loopback(), 0);
    acc.open(ep.protocol());
    acc.set_option(tcp::acceptor::reuse_address(true));
    acc.bind(ep);
    acc.listen(backlog);
    ctl->send_port(acc.local_endpoint().port());
    for (std::size_t i = 0; i < conns; ++i) {
        tcp::socket s = co_await acc.async_accept(asio::use_awaitable);
        asio::co_spawn(*ctx, asio_session(std::move(s), &st), asio::detached);
    }
    co_return co_await timed_sessions<asio::awaitable<server_figures>>(&st, ctl);
}

server_figures run_asio_server(std::size_t conns, control& ctl) {
    return bench::run_on_context([conns, &ctl](asio::io_context* ctx) { return asio_server(ctx, conns, &ctl); });
}

// ============================================================================
// One run: a server variant in a child process, its client in a grandchild.
// ============================================================================

enum class variant { single, single_defer, multi, multi_defer, hop_uring, asio };
constexpr std::array<variant, 6> all_variants{variant::single, variant::single_defer, variant::multi,
                                              variant::multi_defer, variant::hop_uring, variant::asio};

const char* label(variant v) {
    switch (v) {
    case variant::single: return "(a)  raw recv, single-shot";
    case variant::single_defer: return "(a') (a) + SINGLE_ISSUER|DEFER_TASKRUN";
    case variant::multi: return "(b)  raw multishot recv + buf ring";
    case variant::multi_defer: return "(b') (b) + SINGLE_ISSUER|DEFER_TASKRUN";
    case variant::hop_uring: return "(c)  hop io_uring tcp_stream";
    case variant::asio: return "(d)  Asio (epoll reactor)";
    }
    return "?";
}

struct run_result {
    double wall = 0;  // client's
    double srv_user = 0;
    double srv_sys = 0;
    double cli_user = 0;
    double cli_sys = 0;
    std::uint64_t check = 0;
    std::uint64_t rearms = 0;
    std::uint64_t nobufs = 0;
    std::uint64_t multishot_cqes = 0;
    std::uint64_t enters = 0;
    bool ok = false;
    char error[256] = {};
};

struct run_config {
    std::size_t conns = 100;
    std::size_t rounds_each = 3000;
    unsigned buffers = 256;
    bool inproc = false;  // client and server on one thread and one ring (raw variants only)
};

bool is_raw(variant v) { return v != variant::hop_uring && v != variant::asio; }
bool is_multishot(variant v) { return v == variant::multi || v == variant::multi_defer; }
unsigned flags_of(variant v) { return v == variant::single_defer || v == variant::multi_defer ? defer_flags : hop_flags; }

server_figures serve(variant v, const run_config& rc, control& ctl) {
    switch (v) {
    case variant::single: return run_raw_server(false, hop_flags, rc.conns, rc.buffers, ctl);
    case variant::single_defer: return run_raw_server(false, defer_flags, rc.conns, rc.buffers, ctl);
    case variant::multi: return run_raw_server(true, hop_flags, rc.conns, rc.buffers, ctl);
    case variant::multi_defer: return run_raw_server(true, defer_flags, rc.conns, rc.buffers, ctl);
    case variant::hop_uring: return run_hop_server(rc.conns, ctl);
    case variant::asio: return run_asio_server(rc.conns, ctl);
    }
    throw std::logic_error("unknown variant");
}

// `r` with the server's figures `sf`, marked ok.
run_result with_server(run_result r, const server_figures& sf) {
    r.srv_user = sf.user;
    r.srv_sys = sf.sys;
    r.rearms = sf.rearms;
    r.nobufs = sf.nobufs;
    r.multishot_cqes = sf.multishot_cqes;
    r.enters = sf.enters;
    r.ok = true;
    return r;
}

// Forks a child that runs `fn()`, writes the report it returns (a struct
// with `ok` and `error`, sent as bytes; a throw from `fn` goes to `error`)
// to `out_fd`, and exits: 0 if the report is ok and written whole. In the
// parent: the child's pid. @throws std::runtime_error if fork fails.
template <class Fn>
pid_t fork_reporting(int out_fd, const char* what, Fn fn) {
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid < 0) throw_errno(errno, what);
    if (pid > 0) return pid;
    decltype(fn()) rep;
    try {
        rep = fn();
    } catch (const std::exception& e) {
        std::snprintf(rep.error, sizeof rep.error, "%s", e.what());
    }
    leak_check_before_exit();
    ssize_t w = ::write(out_fd, &rep, sizeof rep);
    ::_exit(rep.ok && w == static_cast<ssize_t>(sizeof rep) ? 0 : 1);
}

// Waits for the child `pid` to end; its wait status.
int wait_child(pid_t pid) {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return status;
}

// In the server's child: starts the client, serves, collects the client's report.
run_result server_process(variant v, const run_config& rc) {
    start_watchdog();
    if (rc.inproc) {
        if (!is_raw(v)) throw std::logic_error("the in-process section runs the raw variants only");
        run_result r;
        const server_figures sf = run_raw_inproc(is_multishot(v), flags_of(v), rc.conns, rc.rounds_each, rc.buffers,
                                                 &r.check, &r.wall);
        return with_server(r, sf);
    }
    int to_client[2], from_client[2];
    if (::pipe2(to_client, O_CLOEXEC) != 0 || ::pipe2(from_client, O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
    const pid_t pid = fork_reporting(from_client[1], "fork the client", [&] {
        ::close(to_client[1]);
        ::close(from_client[0]);
        start_watchdog();
        std::uint16_t port = 0;
        if (!read_all_fd(to_client[0], &port, sizeof port, "client: read the port")) {
            throw std::runtime_error("client: the server went away before listening");
        }
        return run_client(port, rc.conns, rc.rounds_each, to_client[0]);
    });
    ::close(to_client[0]);
    ::close(from_client[1]);
    control ctl{to_client[1]};
    server_figures sf;
    try {
        sf = serve(v, rc, ctl);
    } catch (...) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        throw;
    }
    client_report rep;
    const bool got = read_all_fd(from_client[0], &rep, sizeof rep, "server: read the client's report");
    wait_child(pid);
    ::close(to_client[1]);
    ::close(from_client[0]);
    if (!got || !rep.ok) throw std::runtime_error(std::string("client failed: ") + (got ? rep.error : "no report"));
    run_result r;
    r.wall = rep.wall;
    r.cli_user = rep.user;
    r.cli_sys = rep.sys;
    r.check = rep.check;
    return with_server(r, sf);
}

// Runs server_process(v) in a child (nothing of one run is left in the next).
run_result run_isolated(variant v, const run_config& rc) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
    const pid_t pid = fork_reporting(fds[1], "fork", [&] {
        ::close(fds[0]);
        return server_process(v, rc);
    });
    ::close(fds[1]);
    run_result r;
    const bool got = read_all_fd(fds[0], &r, sizeof r, "read a run's result");
    ::close(fds[0]);
    const int status = wait_child(pid);
    if (!got) throw std::runtime_error(std::string(label(v)) + ": the run died (status " + std::to_string(status) + ")");
    if (!r.ok) throw std::runtime_error(std::string(label(v)) + ": " + r.error);
    return r;
}

// ============================================================================
// What the machine supports
// ============================================================================

std::string kernel_release() {
    utsname u{};
    if (::uname(&u) != 0) return "unknown";
    return u.release;
}

std::string liburing_version() {
    std::string v;
    if (std::FILE* p = ::popen("dpkg-query -W -f='${Version}' liburing-dev 2>/dev/null", "r")) {
        char line[128];
        while (std::fgets(line, sizeof line, p)) v += line;
        ::pclose(p);
    }
    return v.empty() ? "unknown (not a dpkg install)" : v;
}

// Throws, naming the missing feature, unless this kernel does everything the
// variants need: IORING_OP_RECV/SEND, both ring flag sets, a provided-buffer
// ring, and a multishot recv that selects from it.
void check_features() {
    {
        ring_owner r(8, defer_flags, "feature check");
    }
    ring_owner ro(8, hop_flags, "feature check");
    io_uring* ring = ro.get();
    io_uring_probe* probe = io_uring_get_probe_ring(ring);
    if (probe == nullptr) throw std::runtime_error("feature check: io_uring_get_probe_ring failed (Linux 5.6+)");
    const bool ops = io_uring_opcode_supported(probe, IORING_OP_RECV) && io_uring_opcode_supported(probe, IORING_OP_SEND);
    io_uring_free_probe(probe);
    if (!ops) throw std::runtime_error("feature check: this kernel's io_uring lacks IORING_OP_RECV/IORING_OP_SEND");
    buffer_ring br(ring, 2);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno(errno, "socketpair");
    write_all_fd(sv[1], "x", 1, "feature check: write");
    io_uring_sqe* s = next_sqe(ring);
    io_uring_prep_recv_multishot(s, sv[0], nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = 0;
    io_uring_sqe_set_data64(s, 1);
    io_uring_cqe* cqe = nullptr;
    int r = io_uring_submit_and_wait(ring, 1);
    if (r >= 0) r = io_uring_peek_cqe(ring, &cqe);
    const int res = cqe ? cqe->res : r;
    const unsigned flags = cqe ? cqe->flags : 0;
    if (cqe) io_uring_cqe_seen(ring, cqe);
    ::close(sv[1]);
    ::close(sv[0]);
    // Closing the socket ends the multishot: reap its last completion.
    while (flags & IORING_CQE_F_MORE) {
        if (io_uring_wait_cqe(ring, &cqe) != 0) break;
        const bool more = cqe->flags & IORING_CQE_F_MORE;
        io_uring_cqe_seen(ring, cqe);
        if (!more) break;
    }
    if (res == -EINVAL) throw std::runtime_error("feature check: multishot recv is refused (-EINVAL): it needs Linux 6.0+");
    if (res != 1 || !(flags & IORING_CQE_F_BUFFER) || !(flags & IORING_CQE_F_MORE)) {
        throw std::runtime_error("feature check: a multishot recv into a provided-buffer ring gave res " +
                                 std::to_string(res) + ", flags " + std::to_string(flags) +
                                 " (wanted 1 byte, IORING_CQE_F_BUFFER and IORING_CQE_F_MORE)");
    }
}

std::size_t parse_count(const std::string& flag, const std::string& v, std::size_t lo, std::size_t hi) {
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n < lo || n > hi) {
        throw std::invalid_argument(flag + " " + v + ": expected a whole number from " + std::to_string(lo) + " to " +
                                    std::to_string(hi));
    }
    return n;
}

// The median (of the middle two for an even count), min and max of `v`
// (not empty).
std::array<double, 3> spread(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return {n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v.front(), v.back()};
}

// Runs `vs` interleaved for `rounds` rounds and prints the section's tables.
void run_section(const char* title, const std::vector<variant>& vs, const run_config& rc, std::size_t rounds,
                 bool separate) {
    std::vector<std::vector<run_result>> runs(vs.size());
    for (std::size_t r = 0; r < rounds; ++r) {
        for (std::size_t k = 0; k < vs.size(); ++k) {
            run_result res = run_isolated(vs[k], rc);
            if (!runs[0].empty() && res.check != runs[0].front().check) {
                throw std::runtime_error(std::string(label(vs[k])) + ": the client's checksum differs");
            }
            runs[k].push_back(res);
        }
    }

    const double rts = static_cast<double>(rc.conns * rc.rounds_each);
    auto fig = [&](std::size_t k, auto f) {
        std::vector<double> v;
        for (const auto& r : runs[k]) v.push_back(f(r));
        return spread(std::move(v));
    };
    auto rate = [&](const run_result& r) { return rts / r.wall; };
    auto user = [&](const run_result& r) { return r.srv_user * 1e6 / rts; };
    auto sys = [&](const run_result& r) { return r.srv_sys * 1e6 / rts; };
    auto total = [&](const run_result& r) { return (r.srv_user + r.srv_sys) * 1e6 / rts; };
    auto client = [&](const run_result& r) { return (r.cli_user + r.cli_sys) * 1e6 / rts; };
    auto enter_rate = [&](const run_result& r) { return r.enters ? rts / static_cast<double>(r.enters) : 0.0; };
    auto range = [](const std::array<double, 3>& f, int decimals) {
        char b[64];
        std::snprintf(b, sizeof b, "%.*f [%.*f..%.*f]", decimals, f[0], decimals, f[1], decimals, f[2]);
        return std::string(b);
    };
    // Per round, baseline / variant of the runs next to each other in time
    // (the load on the machine changes less within a round than across).
    auto paired = [&](std::size_t base, std::size_t k, auto f) {
        std::vector<double> v;
        for (std::size_t r = 0; r < runs[k].size(); ++r) v.push_back(f(runs[base][r]) / f(runs[k][r]));
        return spread(std::move(v));
    };
    std::size_t asio_k = vs.size();
    for (std::size_t k = 0; k < vs.size(); ++k) {
        if (vs[k] == variant::asio) asio_k = k;
    }

    std::printf("\n%s\n", title);
    std::printf("per round trip, %s CPU (us); median [min..max] over %zu rounds\n",
                separate ? "the SERVER process's" : "the process's (client + server)", rounds);
    std::printf("(user/sys split by scheduler-tick sampling, coarse; user+sys is exact)\n");
    std::printf("%-40s | %-24s | %-5s | %-18s | %-18s | %-6s | %s\n", "server", "round trips/s", "user", "sys",
                "user+sys", "client", "rt/enter");
    std::printf("%s\n", std::string(136, '-').c_str());
    for (std::size_t k = 0; k < vs.size(); ++k) {
        const double per_enter = fig(k, enter_rate)[0];
        char pe[32] = "-";
        if (per_enter > 0) std::snprintf(pe, sizeof pe, "%.1f", per_enter);
        char cl[32] = "-";
        if (separate) std::snprintf(cl, sizeof cl, "%.2f", fig(k, client)[0]);
        std::printf("%-40s | %-24s | %5.2f | %-18s | %-18s | %6s | %s\n", label(vs[k]), range(fig(k, rate), 0).c_str(),
                    fig(k, user)[0], range(fig(k, sys), 2).c_str(), range(fig(k, total), 2).c_str(), cl, pe);
    }
    std::printf("\nratios, per round then median [min..max]: baseline / variant, above 1 = the variant uses less\n");
    std::printf("%-40s | %-18s | %-18s | %-18s | %-18s\n", "server", "sys vs (a)", "user+sys vs (a)", "sys vs Asio",
                "user+sys vs Asio");
    std::printf("%s\n", std::string(125, '-').c_str());
    for (std::size_t k = 0; k < vs.size(); ++k) {
        const bool asio = asio_k < vs.size();
        std::printf("%-40s | %-18s | %-18s | %-18s | %-18s\n", label(vs[k]), range(paired(0, k, sys), 2).c_str(),
                    range(paired(0, k, total), 2).c_str(), asio ? range(paired(asio_k, k, sys), 2).c_str() : "-",
                    asio ? range(paired(asio_k, k, total), 2).c_str() : "-");
    }
    for (std::size_t k = 0; k < vs.size(); ++k) {
        std::uint64_t rearms = 0, nobufs = 0, cqes = 0;
        for (const auto& r : runs[k]) {
            rearms += r.rearms;
            nobufs += r.nobufs;
            cqes += r.multishot_cqes;
        }
        if (cqes) {
            std::printf("%s: %llu multishot recv completions (with -ENOBUFS ones), %llu re-arms (%llu after -ENOBUFS) "
                        "over all rounds\n",
                        label(vs[k]), static_cast<unsigned long long>(cqes), static_cast<unsigned long long>(rearms),
                        static_cast<unsigned long long>(nobufs));
        }
    }
}

}  // namespace

int main(int argc, char** argv) try {
    bool quick = false;
    std::size_t rounds = 0;
    std::string only;
    run_config rc;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
            return argv[++i];
        };
        if (a == "--quick") {
            quick = true;
        } else if (a == "--rounds") {
            rounds = parse_count(a, value(), 1, 1000);
        } else if (a == "--buffers") {
            const std::string v = value();
            rc.buffers = static_cast<unsigned>(parse_count(a, v, 1, 32768));
            if (rc.buffers & (rc.buffers - 1)) throw std::invalid_argument("--buffers " + v + ": expected a power of 2");
        } else if (a == "--only") {
            only = value();
            if (only != "separate" && only != "inproc") {
                throw std::invalid_argument("--only " + only + ": expected separate or inproc");
            }
        } else {
            throw std::invalid_argument("unknown argument '" + a +
                                        "' (expected --quick, --rounds N, --buffers N, --only separate|inproc)");
        }
    }
    if (rounds == 0) rounds = quick ? 1 : 9;
    rc.rounds_each = quick ? 200 : 3000;

    const std::string kernel = kernel_release();
    std::printf("uring_recv_bench: Linux %s, liburing-dev %s, %zu cores; %zu connections x %zu round trips of %zu "
                "bytes, TCP_NODELAY, 127.0.0.1; %zu round(s), interleaved; buffer ring: %u x %u B\n",
                kernel.c_str(), liburing_version().c_str(), bench::core_count(), rc.conns, rc.rounds_each, msg_size,
                rounds, rc.buffers, buf_size);
    if (quick) std::printf("--quick: runs are short, so the CPU times (counted in scheduler ticks) are coarse\n");
    check_features();
    std::printf("features: IORING_OP_RECV/SEND, SINGLE_ISSUER|DEFER_TASKRUN, provided-buffer ring, multishot recv: ok\n");

    if (only.empty() || only == "separate") {
        run_section("SEPARATE: the server in one process, the client (raw liburing, single-shot) in another",
                    {all_variants.begin(), all_variants.end()}, rc, rounds, true);
    }
    if (only.empty() || only == "inproc") {
        run_config ip = rc;
        ip.inproc = true;
        run_section("INPROC: client (raw liburing, single-shot) and server on one thread, one ring (echo_bench's setup)",
                    {variant::single, variant::single_defer, variant::multi, variant::multi_defer}, ip, rounds, false);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "uring_recv_bench: %s\n", e.what());
    return 2;
}
