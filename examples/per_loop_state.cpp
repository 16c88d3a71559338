// State per loop, no locks: a word-counting TCP server on every loop of an
// io_pool. Each loop keeps its own table (std::unordered_map, no mutex):
// only tasks running on loop i touch tables[i], found with
// pool.this_index(). To read every table, run a task on each loop
// (spawn_on_each) and gather the answers.
//
// The program serves on a free port (SO_REUSEPORT: one listener per loop,
// so each connection stays on the loop that accepted it), sends itself a
// few hundred words over several connections, prints what each loop
// counted, and exits 0.
//
//   per_loop_state [--loops N]        (default 2; HOP_BACKEND picks the backend)

#include <hop/hop.hpp>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

// One per loop. Only code running on that loop reads or writes it.
struct loop_state {
    std::unordered_map<std::string, std::size_t> counts;
    std::size_t connections = 0;
};

// Reads words (one per line) and answers each with how often this loop has
// seen it.
hop::task<> count_words(hop::io_pool& pool, std::vector<loop_state>& tables, hop::tcp_stream conn) {
    loop_state& mine = tables[pool.this_index()];  // this loop's table: no lock
    ++mine.connections;
    std::string pending;
    std::array<char, 512> buf;
    for (;;) {
        const std::size_t n = co_await conn.read_some(buf);
        if (n == 0) co_return;
        pending.append(buf.data(), n);
        std::string replies;
        for (std::size_t nl; (nl = pending.find('\n')) != std::string::npos; pending.erase(0, nl + 1)) {
            const std::size_t seen = ++mine.counts[pending.substr(0, nl)];
            replies += "loop " + std::to_string(pool.this_index()) + ": " + std::to_string(seen) + "\n";
        }
        co_await conn.write_all(replies);
    }
}

// Each loop accepts on its own listener and serves there.
hop::task<> serve_here(hop::io_pool& pool, std::vector<loop_state>& tables, hop::tcp_listener& lis) {
    for (;;) {
        hop::tcp_stream conn = co_await lis.accept();
        (void)pool.spawn_on(pool.this_index(), count_words(pool, tables, std::move(conn)));
    }
}

// A client: sends `words` one line at a time and reads each answer.
hop::task<std::size_t> client(std::uint16_t port, std::vector<std::string> words) {
    hop::tcp_stream c = co_await hop::tcp_stream::connect(hop::endpoint::loopback_v4(port));
    std::size_t answers = 0;
    std::string got;
    std::array<char, 256> buf;
    for (const auto& w : words) {
        co_await c.write_all(w + "\n");
        while (got.find('\n') == std::string::npos) {
            const std::size_t n = co_await c.read_some(buf);
            if (n == 0) throw std::runtime_error("the server closed the connection early");
            got.append(buf.data(), n);
        }
        got.erase(0, got.find('\n') + 1);
        ++answers;
    }
    co_return answers;
}

std::size_t parse_loops(int argc, char** argv) {
    if (argc == 1) return 2;
    if (argc == 3 && std::string_view(argv[1]) == "--loops") {
        const std::string v = argv[2];
        char* end = nullptr;
        const unsigned long n = std::strtoul(v.c_str(), &end, 10);
        if (!v.empty() && *end == '\0' && n >= 1 && n <= 256) return n;
        throw std::invalid_argument("--loops '" + v + "': expected a number from 1 to 256");
    }
    throw std::invalid_argument("usage: per_loop_state [--loops N]");
}

}  // namespace

int main(int argc, char** argv) try {
    const std::size_t loops = parse_loops(argc, argv);
    // Declared before the pool, so they outlive it: the pool's destructor
    // ends (and waits for) every task that uses them.
    std::vector<loop_state> tables(loops);  // tables[i] belongs to loop i
    // One SO_REUSEPORT listener per loop, all on the port the first got.
    std::vector<hop::tcp_listener> listeners;
    listeners.push_back(hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.reuse_port = true}));
    const std::uint16_t port = listeners.front().local_endpoint().port();
    for (std::size_t i = 1; i < loops; ++i) {
        listeners.push_back(hop::tcp_listener::bind(hop::endpoint::loopback_v4(port), {.reuse_port = true}));
    }

    hop::io_pool pool{loops};
    for (std::size_t i = 0; i < pool.size(); ++i) (void)pool.spawn_on(i, serve_here(pool, tables, listeners[i]));

    // Eight clients, 50 words each, from this thread (hop::sync_wait).
    const std::vector<std::string> vocabulary{"tokio", "asio", "seastar", "liburing", "hop"};
    std::size_t answers = 0;
    for (int c = 0; c < 8; ++c) {
        std::vector<std::string> words;
        for (int w = 0; w < 50; ++w) words.push_back(vocabulary[static_cast<std::size_t>(c + w) % vocabulary.size()]);
        answers += hop::sync_wait(client(port, std::move(words)));
    }

    // Read each table on its own loop.
    auto reports = pool.spawn_on_each([&](std::size_t i) -> hop::task<std::string> {
        return [](loop_state& t, std::size_t index) -> hop::task<std::string> {
            std::map<std::string, std::size_t> sorted(t.counts.begin(), t.counts.end());
            std::string line = "loop " + std::to_string(index) + ": " + std::to_string(t.connections) + " connection(s)";
            for (const auto& [word, n] : sorted) line += ", " + word + " " + std::to_string(n);
            co_return line;
        }(tables[i], i);
    });
    for (auto& r : reports) std::printf("%s\n", r.get().c_str());
    std::printf("%zu answers from %zu loops (%s)\n", answers, pool.size(), std::string(pool[0].backend_name()).c_str());
    return answers == 8 * 50 ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "per_loop_state: %s\n", e.what());
    return 1;
}
