#include <hop/net.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/file.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <doctest/doctest.h>

#include <arpa/inet.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <chrono>
#include <future>
#include <atomic>
#include <vector>

TEST_SUITE("net") {

TEST_CASE("endpoint::parse reads IPv4 and IPv6 and writes them back") {
    auto a = hop::endpoint::parse("127.0.0.1:8080");
    CHECK(a.is_v4());
    CHECK_FALSE(a.is_v6());
    CHECK(a.port() == 8080);
    CHECK(a.address() == "127.0.0.1");
    CHECK(a.to_string() == "127.0.0.1:8080");
    CHECK(a == hop::endpoint::loopback_v4(8080));
    CHECK(a.size() == sizeof(sockaddr_in));

    auto b = hop::endpoint::parse("[::1]:80");
    CHECK(b.is_v6());
    CHECK(b.port() == 80);
    CHECK(b.address() == "::1");
    CHECK(b.to_string() == "[::1]:80");
    CHECK(b == hop::endpoint::loopback_v6(80));
    CHECK(b.size() == sizeof(sockaddr_in6));

    CHECK(hop::endpoint::parse("0.0.0.0:0") == hop::endpoint::any_v4(0));
    CHECK(hop::endpoint::parse("[::]:65535") == hop::endpoint::any_v6(65535));
    CHECK(hop::endpoint::parse("[fe80::1%1]:9").to_string() == "[fe80::1%1]:9");
    for (const char* text : {"10.1.2.3:1", "255.255.255.255:65535", "[2001:db8::7]:443", "[::ffff:1.2.3.4]:5"}) {
        CHECK(hop::endpoint::parse(text).to_string() == text);
    }
    CHECK(hop::endpoint{} == hop::endpoint::any_v4(0));
    CHECK(a.with_port(1).port() == 1);
    CHECK(a.with_port(1).address() == "127.0.0.1");
    CHECK_FALSE(a == b);
    CHECK_FALSE(a == a.with_port(8081));
}

TEST_CASE("endpoint::parse refuses garbage with std::invalid_argument naming the text") {
    for (const char* text :
         {"", ":", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1:8o",
          "127.0.0.1: 80", "1.2.3:80", "1.2.3.4.5:80", "256.0.0.1:80", "localhost:80", "::1:80", "[::1]", "[::1]80",
          "[::1:80", "[]:80", "[1.2.3.4]:80", "[::1%]:80", "[fe80::1%no-such-interface]:80", "[::1]:123456",
          "example.com:443", " 127.0.0.1:80"}) {
        CAPTURE(text);
        try {
            (void)hop::endpoint::parse(text);
            FAIL("accepted: " << text);
        } catch (const std::invalid_argument& e) {
            CHECK(std::string(e.what()).find("'" + std::string(text) + "'") != std::string::npos);
        }
    }
}

TEST_CASE("endpoint::from_sockaddr takes IPv4 and IPv6 and refuses the rest") {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    in.sin_port = htons(7);
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto e = hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&in), sizeof in);
    CHECK(e.to_string() == "127.0.0.1:7");
    CHECK(std::memcmp(e.data(), &in, sizeof in) == 0);

    sockaddr_in6 in6{};
    in6.sin6_family = AF_INET6;
    in6.sin6_port = htons(9);
    in6.sin6_addr = in6addr_loopback;
    CHECK(hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&in6), sizeof in6).to_string() == "[::1]:9");

    sockaddr unix_like{};
    unix_like.sa_family = AF_UNIX;
    CHECK_THROWS_WITH_AS(hop::endpoint::from_sockaddr(&unix_like, sizeof unix_like), doctest::Contains("family 1"),
                         std::invalid_argument);
    CHECK_THROWS_AS(hop::endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&in), 4), std::invalid_argument);
    CHECK_THROWS_AS(hop::endpoint::from_sockaddr(nullptr, 0), std::invalid_argument);
}

// Lookups here use only names /etc/hosts answers and numeric addresses:
// tests never send a query off this machine.
namespace {
hop::task<std::vector<hop::endpoint>> lookup(std::string host, std::uint16_t port) {
    co_return co_await hop::resolve(std::move(host), port);
}
hop::task<int> wait_abandoned(hop::future<int> f) {
    co_return co_await hop::shield(std::move(f));
}
hop::task<int> wait_cancelling(hop::future<int> f) {
    co_return co_await std::move(f);
}
// Says it is about to await, then awaits `f` as resolve() does.
hop::task<int> arm_then_wait(std::atomic<bool>* armed, hop::future<int> f) {
    armed->store(true, std::memory_order_release);
    co_return co_await hop::shield(std::move(f));
}
}  // namespace

TEST_CASE("resolve: localhost and numeric addresses, with the port") {
    auto eps = hop::run(lookup("localhost", 8080));
    REQUIRE_FALSE(eps.empty());
    bool loopback = false;
    for (auto& e : eps) {
        CHECK(e.port() == 8080);
        loopback = loopback || e == hop::endpoint::loopback_v4(8080) || e == hop::endpoint::loopback_v6(8080);
    }
    CHECK(loopback);
    auto one = hop::sync_wait(lookup("127.0.0.1", 80));
    REQUIRE(one.size() == 1);
    CHECK(one[0] == hop::endpoint::loopback_v4(80));
}

TEST_CASE("resolve: bad names are refused before any lookup") {
    CHECK_THROWS_WITH_AS(hop::resolve("", 80), doctest::Contains("empty"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(hop::resolve(std::string("a\0b", 3), 80), doctest::Contains("NUL"), std::invalid_argument);
}

TEST_CASE("a wait on blocking work is a cancellation point: the caller leaves, the work ends on its own") {
    // A plain call already running cannot be interrupted: with co_await the
    // future's cancel() finds it running (and changes nothing), with
    // hop::shield it is not even asked. Either way the caller leaves at once.
    for (bool shielded : {false, true}) {
        CAPTURE(shielded);
        std::promise<int> gate;
        std::shared_future<int> opened = gate.get_future().share();
        std::promise<void> started;
        auto started_f = started.get_future();
        auto blocked = hop::run_blocking([opened, &started] {
            started.set_value();
            return opened.get() + 1;
        });
        started_f.wait();  // running: past the point where cancel() could drop it
        hop::io_loop loop;
        auto waiting = loop.spawn(shielded ? wait_abandoned(blocked) : wait_cancelling(blocked));
        loop.poll();
        REQUIRE_FALSE(waiting.done());
        CHECK(waiting.cancel());
        while (!waiting.done()) loop.run_once();
        CHECK(waiting.cancelled());
        CHECK_FALSE(blocked.done());  // still blocked: nobody interrupted the call
        CHECK_FALSE(blocked.cancelled());
        gate.set_value(41);
        CHECK(blocked.get() == 42);  // and it finished on its own
    }
}

TEST_CASE("race: a stop request meets a pool worker suspending on a shielded future (resolve's former wait)") {
    // The stop comes from this thread at the moment a pool worker suspends;
    // its resumption is queued to the pool, where the other worker may run
    // the coroutine to its end (and free its frame) while the first is still
    // inside await_suspend. Half the rounds also complete the awaited
    // future at the same moment. ASan / TSan builds catch a use of the frame
    // after the resumption was handed over.
    hop::cpu_pool pool{2};
    int cancelled = 0, valued = 0, other = 0;
    for (int i = 0; i < 20'000; ++i) {
        hop::promise<int> p;
        std::atomic<bool> armed{false};
        auto outer = hop::spawn(pool, arm_then_wait(&armed, p.get_future()));
        while (!armed.load(std::memory_order_acquire)) {
        }
        outer.cancel();
        if (i % 2 == 1) p.set_value(i);
        try {
            (void)outer.get();
            ++valued;
        } catch (const hop::cancelled_error&) {
            ++cancelled;
        } catch (...) {
            ++other;
        }
    }
    CHECK(other == 0);
    CHECK(cancelled + valued == 20'000);
    CHECK(cancelled >= 10'000);  // every round without a value ends cancelled
}

}  // TEST_SUITE
