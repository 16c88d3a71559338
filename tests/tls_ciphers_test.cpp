// hop::tls::context's default cipher suites, as tools nobody here wrote see
// them: a hop TLS server with an RSA (and an ECDSA) certificate, probed by
// `openssl s_client -cipher` and scanned by `sslscan`. The default is
// Mozilla's "intermediate" profile: TLS 1.2 only with ECDHE and an AEAD
// (AES-GCM, ChaCha20-Poly1305), the TLS 1.3 suites; no static-RSA key
// exchange, no CBC. set_ciphers / set_ciphersuites widen it.

#include <hop/tls.hpp>

#include <hop/combinators.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include "support/backend.hpp"
#include "support/http_peers.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"
#include "support/tls_peers.hpp"

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::run_on;

namespace tls = hop::tls;

namespace {

const hop_test::tls_cert_set& certs() { return hop_test::test_certs(); }

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

/// What the hop server saw: handshakes that worked (with their suites) and
/// those that failed.
struct server_log {
    std::vector<std::string> ciphers;
    int failed = 0;
    std::unique_ptr<hop::event> first_ended = std::make_unique<hop::event>();  // an outcome is recorded
};

/// One connection: the handshake (bounded by a generous guard: a scanner's
/// probe that stops talking must not hold the test), "hello\n", close_notify.
hop::task<void> serve_one(hop::tcp_stream tcp, tls::context ctx, server_log& log) {
    try {
        auto s = co_await hop::with_timeout(2min, tls::stream::accept(std::move(ctx), std::move(tcp)));
        log.ciphers.emplace_back(s.cipher());
        co_await s.write_all(std::string_view("hello\n"));
        co_await s.shutdown(0ms);
    } catch (const hop::cancelled_error&) {
        throw;
    } catch (const std::exception&) {
        ++log.failed;  // a refused handshake, or a scanner that hung up
    }
    log.first_ended->set();
}

/// Accepts until cancelled, each connection on its own task.
hop::task<void> serve(hop::tcp_listener& lis, tls::context ctx, server_log& log) {
    hop::task_group g;
    try {
        while (true) {
            auto tcp = co_await lis.accept();
            g.spawn(serve_one(std::move(tcp), ctx, log));
        }
    } catch (const hop::cancelled_error&) {
    }
    g.cancel();
    co_await g.wait();
}

std::vector<std::string> sslscan_args(std::uint16_t port, const std::string&) {
    return {"sslscan", "--no-colour", "127.0.0.1:" + std::to_string(port)};
}

/// Runs the peer `argv` against a hop server with `ctx`; returns what the
/// peer did and what the server saw (once it has recorded a connection's
/// outcome: the peer can exit on the server's alert before the server has
/// counted the failed handshake; sslscan's many probes are not waited for).
hop::task<std::pair<hop_test::peer_result, server_log>> probe(tls::context ctx,
                                                             std::vector<std::string> (*argv)(std::uint16_t,
                                                                                               const std::string&),
                                                             std::string arg) {
    auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    server_log log;
    hop::task_group g;
    g.spawn(serve(lis, std::move(ctx), log));
    auto r = co_await hop_test::run_peer(argv(lis.local_endpoint().port(), arg));
    if (argv != sslscan_args) co_await hop::with_timeout(hop_test::scaled(2min), log.first_ended->wait());
    g.cancel();
    co_await g.wait();
    co_return std::make_pair(std::move(r), std::move(log));
}

/// `openssl s_client` speaking only TLS 1.2 and offering only `cipher`
/// (OpenSSL's name), verifying hop's certificate.
std::vector<std::string> s_client_tls12(std::uint16_t port, const std::string& cipher) {
    auto a = hop_test::s_client_args(port, certs().ca, "localhost", "-tls1_2");
    a.push_back("-cipher");
    a.push_back(cipher);
    return a;
}

/// `openssl s_client` speaking only TLS 1.3, offering only `suite`.
std::vector<std::string> s_client_tls13(std::uint16_t port, const std::string& suite) {
    auto a = hop_test::s_client_args(port, certs().ca, "localhost", "-tls1_3");
    a.push_back("-ciphersuites");
    a.push_back(suite);
    return a;
}


hop::task<void> expect_accepted(tls::context ctx, std::vector<std::string> (*argv)(std::uint16_t, const std::string&),
                                std::string cipher, std::string expected_name) {
    INFO("client offers only " << cipher);
    auto [peer, log] = co_await probe(std::move(ctx), argv, cipher);
    CHECK_MESSAGE(peer.exited_ok(), peer.describe());
    CHECK_MESSAGE(contains(peer.out, "hello"), peer.describe());
    REQUIRE(log.ciphers.size() == 1);
    CHECK(log.ciphers[0] == expected_name);
    CHECK(log.failed == 0);
}

hop::task<void> expect_refused(tls::context ctx, std::vector<std::string> (*argv)(std::uint16_t, const std::string&),
                               std::string cipher) {
    INFO("client offers only " << cipher);
    auto [peer, log] = co_await probe(std::move(ctx), argv, cipher);
    CHECK_MESSAGE(!peer.exited_ok(), peer.describe());
    CHECK_MESSAGE(!contains(peer.out, "hello"), peer.describe());
    CHECK(log.ciphers.empty());
    CHECK(log.failed == 1);
}

tls::context rsa_server() { return tls::context::server(certs().rsa.cert, certs().rsa.key); }
tls::context ecdsa_server() { return tls::context::server(certs().localhost.cert, certs().localhost.key); }

/// One line of sslscan's cipher list: "Accepted  TLSv1.2  128 bits  NAME ...".
struct scanned_suite {
    std::string protocol;
    std::string name;
};

/// The suites sslscan says the server accepts ("Preferred" and "Accepted" lines).
std::vector<scanned_suite> accepted_suites(const std::string& out) {
    std::vector<scanned_suite> list;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string verdict, protocol, bits, unit, name;
        if (!(words >> verdict >> protocol >> bits >> unit >> name)) continue;
        if ((verdict == "Accepted" || verdict == "Preferred") && unit == "bits") list.push_back({protocol, name});
    }
    return list;
}

hop::task<void> scan(tls::context ctx, std::set<std::string> expected_tls12) {
    auto [peer, log] = co_await probe(std::move(ctx), sslscan_args, "");
    REQUIRE_MESSAGE(peer.exited_ok(), peer.describe());
    const auto suites = accepted_suites(peer.out);
    INFO("sslscan said:\n" << peer.out);
    std::set<std::string> tls12, tls13;
    for (const auto& s : suites) {
        INFO(s.protocol << " " << s.name);
        CHECK((s.protocol == "TLSv1.2" || s.protocol == "TLSv1.3"));
        if (s.protocol == "TLSv1.3") tls13.insert(s.name);
        if (s.protocol != "TLSv1.2") continue;
        tls12.insert(s.name);
        // Forward secrecy: an ephemeral (EC)DH key exchange, never static RSA.
        CHECK((s.name.starts_with("ECDHE-") || s.name.starts_with("DHE-")));
        // AEAD only: OpenSSL names a CBC suite after its MAC (-SHA, -SHA256, -SHA384).
        CHECK((contains(s.name, "-GCM-") || contains(s.name, "CHACHA20-POLY1305")));
    }
    CHECK(tls12 == expected_tls12);
    CHECK(tls13 == std::set<std::string>{"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                         "TLS_CHACHA20_POLY1305_SHA256"});
    CHECK(!contains(peer.out, "TLSv1.0   enabled"));
    CHECK(!contains(peer.out, "TLSv1.1   enabled"));
}

}  // namespace

TEST_CASE("tls ciphers: RSA certificate, s_client -tls1_2: static-RSA and CBC suites refused, ECDHE with GCM or "
          "ChaCha20-Poly1305 accepted, TLS 1.3 accepted") {
    certs();
    for_each_backend([](hop::backend b) {
        // Static-RSA key exchange with CBC (and SHA-1), the suite every
        // OpenSSL server accepted by default.
        run_on(b, expect_refused(rsa_server(), s_client_tls12, "AES128-SHA"));
        // Static-RSA with CBC and SHA-256; and with GCM (no forward secrecy).
        run_on(b, expect_refused(rsa_server(), s_client_tls12, "AES256-SHA256"));
        run_on(b, expect_refused(rsa_server(), s_client_tls12, "AES128-GCM-SHA256"));
        // ECDHE, but CBC.
        run_on(b, expect_refused(rsa_server(), s_client_tls12, "ECDHE-RSA-AES128-SHA256"));
        run_on(b, expect_refused(rsa_server(), s_client_tls12, "ECDHE-RSA-AES256-SHA"));

        run_on(b, expect_accepted(rsa_server(), s_client_tls12, "ECDHE-RSA-AES128-GCM-SHA256",
                                  "ECDHE-RSA-AES128-GCM-SHA256"));
        run_on(b, expect_accepted(rsa_server(), s_client_tls12, "ECDHE-RSA-AES256-GCM-SHA384",
                                  "ECDHE-RSA-AES256-GCM-SHA384"));
        run_on(b, expect_accepted(rsa_server(), s_client_tls12, "ECDHE-RSA-CHACHA20-POLY1305",
                                  "ECDHE-RSA-CHACHA20-POLY1305"));
        for (const char* suite : {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}) {
            run_on(b, expect_accepted(rsa_server(), s_client_tls13, suite, suite));
        }
    });
}

TEST_CASE("tls ciphers: ECDSA certificate, s_client -tls1_2: ECDHE-ECDSA with GCM or ChaCha20-Poly1305 accepted, "
          "CBC refused") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, expect_refused(ecdsa_server(), s_client_tls12, "ECDHE-ECDSA-AES128-SHA"));
        run_on(b, expect_refused(ecdsa_server(), s_client_tls12, "ECDHE-ECDSA-AES256-SHA384"));
        run_on(b, expect_accepted(ecdsa_server(), s_client_tls12, "ECDHE-ECDSA-AES128-GCM-SHA256",
                                  "ECDHE-ECDSA-AES128-GCM-SHA256"));
        run_on(b, expect_accepted(ecdsa_server(), s_client_tls12, "ECDHE-ECDSA-CHACHA20-POLY1305",
                                  "ECDHE-ECDSA-CHACHA20-POLY1305"));
    });
}

TEST_CASE("tls ciphers: sslscan of a hop server (RSA and ECDSA certificates) lists no CBC and no static-RSA suite") {
    certs();
    for_each_backend([](hop::backend b) {
        run_on(b, scan(rsa_server(), {"ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                                      "ECDHE-RSA-CHACHA20-POLY1305"}));
        run_on(b, scan(ecdsa_server(), {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                        "ECDHE-ECDSA-CHACHA20-POLY1305"}));
    });
}

TEST_CASE("tls ciphers: set_ciphers widens the default (AES128-SHA accepted again), set_ciphersuites narrows TLS 1.3") {
    certs();
    for_each_backend([](hop::backend b) {
        auto wide = rsa_server();
        wide.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:AES128-SHA");
        run_on(b, expect_accepted(wide, s_client_tls12, "AES128-SHA", "AES128-SHA"));
        run_on(b, expect_accepted(wide, s_client_tls12, "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"));

        auto narrow = rsa_server();
        narrow.set_ciphersuites("TLS_AES_256_GCM_SHA384");
        run_on(b, expect_accepted(narrow, s_client_tls13, "TLS_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"));
        run_on(b, expect_refused(narrow, s_client_tls13, "TLS_AES_128_GCM_SHA256"));
    });
}

namespace {

/// A hop client (default context, trusting the tests' CA) against `srv`
/// that speaks only static-RSA CBC suites: refused; widened with
/// set_ciphers("DEFAULT"), the same client gets through.
hop::task<void> client_vs_cbc_only(const hop_test::openssl_server& srv) {
    auto cli = tls::context::client();
    cli.load_ca_file(certs().ca);
    std::string what = "(nothing thrown)";
    try {
        auto tcp = co_await hop::tcp_stream::connect(srv.endpoint());
        auto t = co_await tls::stream::connect(cli, std::move(tcp), "localhost");
    } catch (const tls::error& e) {
        what = e.what();
    }
    CHECK_MESSAGE(contains(what, "handshake failure"), what);

    cli.set_ciphers("DEFAULT");
    auto tcp = co_await hop::tcp_stream::connect(srv.endpoint());
    auto t = co_await tls::stream::connect(cli, std::move(tcp), "localhost");
    CHECK_MESSAGE((t.cipher() == "AES128-SHA" || t.cipher() == "AES256-SHA256"), t.cipher());
    t.close();
}

}  // namespace

TEST_CASE("tls ciphers: the client context's default is the same profile: a server with only CBC suites is refused") {
    certs();
    for_each_backend([](hop::backend b) {
        hop_test::s_server_options o;
        o.cert = certs().rsa;
        o.version = "-tls1_2";
        o.extra = {"-cipher", "AES128-SHA:AES256-SHA256"};
        hop_test::openssl_server srv(o);
        run_on(b, client_vs_cbc_only(srv));
    });
}

TEST_CASE("tls ciphers: set_ciphers / set_ciphersuites refuse a list OpenSSL takes nothing from, naming it, and keep "
          "the suites from before") {
    certs();
    auto ctx = rsa_server();
    auto what = hop_test::what_of<std::invalid_argument>([&] { ctx.set_ciphers("NO-SUCH-CIPHER:GARBAGE"); });
    CHECK_MESSAGE(contains(what, "'NO-SUCH-CIPHER:GARBAGE'"), what);
    CHECK_MESSAGE(contains(what, "set_ciphers"), what);
    what = hop_test::what_of<std::invalid_argument>([&] { ctx.set_ciphers(""); });
    CHECK_MESSAGE(contains(what, "''"), what);
    what = hop_test::what_of<std::invalid_argument>([&] { ctx.set_ciphersuites("TLS_NO_SUCH_SUITE"); });
    CHECK_MESSAGE(contains(what, "'TLS_NO_SUCH_SUITE'"), what);
    CHECK_MESSAGE(contains(what, "set_ciphersuites"), what);
    // A TLS 1.3 name is no TLS 1.2 list.
    what = hop_test::what_of<std::invalid_argument>([&] { ctx.set_ciphers("TLS_AES_128_GCM_SHA256"); });
    CHECK_MESSAGE(contains(what, "'TLS_AES_128_GCM_SHA256'"), what);

    // The context still has its suites: both versions still shake hands.
    for_each_backend([&](hop::backend b) {
        run_on(b, expect_accepted(ctx, s_client_tls12, "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"));
        run_on(b, expect_accepted(ctx, s_client_tls13, "TLS_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"));
        run_on(b, expect_refused(ctx, s_client_tls12, "AES128-SHA"));
    });
}
