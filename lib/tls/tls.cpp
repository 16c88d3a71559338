// hop::tls on OpenSSL 3.
//
// OpenSSL runs over a BIO of hop's own (hop_bio below) that never touches
// the socket: its read side serves bytes that the stream has read from the
// tcp_stream into m_in, and its write side appends records to m_out, which
// the stream then sends with the tcp_stream's own operations. So the IO is
// hop's (io_uring or epoll, cancellable, under timeouts) and OpenSSL only
// does the crypto and the protocol.
//
// Who touches what (one reader and one writer coroutine may overlap, both on
// the stream's loop; no OpenSSL call ever spans a suspension, so OpenSSL's
// own state needs no lock: the three locks below order the waits around
// it, see "The three locks" at stream::impl):
// - m_in (the bytes read, not yet taken by OpenSSL) is filled by one
//   coroutine at a time: the holder of read_mutex. OpenSSL asks for more
//   (WANT_READ) only after it took everything there was, so a fill always
//   starts with m_in empty.
// - m_out collects records from any OpenSSL call (a reader's SSL_read may
//   queue a KeyUpdate answer or an alert). Only the holder of send_mutex
//   sends: it moves m_out into m_sending and sends that, so records queued
//   meanwhile never move under a send in flight. It sends until both are
//   empty before it lets go, so a reader that finds the mutex taken may
//   leave its records to the sender.
// - A cancelled send leaves the unsent rest in m_sending (m_sent says how
//   far it got): the next flush goes on from there, so the record stream
//   stays whole and the connection usable.
// - Every SSL call that may have to wait (the handshake, SSL_read,
//   SSL_write, the drain of shutdown) runs through stream::impl::drive,
//   the one place that maps SSL_get_error to "send what is queued", "read
//   more" or an error.

#include <hop/detail/assert.hpp>
#include <hop/sync.hpp>
#include <hop/time.hpp>
#include <hop/tls.hpp>

#include "../metrics_impl.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace hop::tls {

namespace {

// The input buffer: small while records are small (requests, responses of
// a few KiB: an idle connection keeps 4 KiB), a full record and then some
// once a read fills it (bulk data).
constexpr std::size_t in_small = 4 * 1024;
constexpr std::size_t in_capacity = 17 * 1024;
constexpr std::size_t out_high_water = 64 * 1024;    // SSL_write stops here and we send

// OpenSSL's error queue as text ("reason; reason"), emptied.
std::string take_ssl_errors() {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        const char* r = ERR_reason_error_string(e);
        std::string part = r ? r : ("error " + std::to_string(e));
        if (out.find(part) != std::string::npos) continue;
        if (!out.empty()) out += "; ";
        out += part;
    }
    return out;
}

[[noreturn]] void throw_ssl(const std::string& what) {
    std::string reasons = take_ssl_errors();
    throw error(what + (reasons.empty() ? std::string() : ": " + reasons));
}

// `s` fit for a message: bytes outside printable ASCII as \xNN (a NUL
// would end what() there).
std::string printable(std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c < 0x7f) {
            out += ch;
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 0xf];
        }
    }
    return out;
}

bool is_ip_literal(const std::string& host) {
    in6_addr a6{};
    in_addr a4{};
    return ::inet_pton(AF_INET, host.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

std::string endpoint_text(const tcp_stream& s) {
    try {
        return s.remote_endpoint().to_string();
    } catch (...) {
        return "unknown peer";
    }
}

}  // namespace

// ---- context ---------------------------------------------------------------

struct context::impl {
    SSL_CTX* ctx = nullptr;
    bool server = false;
    bool verify = true;
    bool resume = true;
    std::vector<unsigned char> alpn;  // wire format: length-prefixed names

    std::mutex sessions_mutex;
    std::map<std::string, SSL_SESSION*, std::less<>> sessions;  // client: host:port -> last session

    impl() = default;
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
        for (auto& [k, s] : sessions) SSL_SESSION_free(s);
        SSL_CTX_free(ctx);
    }

    void store_session(const std::string& key, SSL_SESSION* s) {
        std::lock_guard lock(sessions_mutex);
        auto [it, added] = sessions.try_emplace(key, s);
        if (!added) {
            SSL_SESSION_free(it->second);
            it->second = s;
        }
    }
    SSL_SESSION* find_session(const std::string& key) {  // a new reference, or null
        std::lock_guard lock(sessions_mutex);
        auto it = sessions.find(key);
        if (it == sessions.end()) return nullptr;
        if (!SSL_SESSION_is_resumable(it->second)) {
            SSL_SESSION_free(it->second);
            sessions.erase(it);
            return nullptr;
        }
        SSL_SESSION_up_ref(it->second);
        return it->second;
    }
    void forget_session(const std::string& key) {
        std::lock_guard lock(sessions_mutex);
        auto it = sessions.find(key);
        if (it == sessions.end()) return;
        SSL_SESSION_free(it->second);
        sessions.erase(it);
    }
};

namespace {

int new_session_callback(SSL* ssl, SSL_SESSION* session);

int alpn_select_callback(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                         unsigned int inlen, void* arg) {
    auto* c = static_cast<context::impl*>(arg);
    if (c->alpn.empty()) return SSL_TLSEXT_ERR_NOACK;
    unsigned char* selected = nullptr;
    // Server preference: OpenSSL walks its first list and takes the first
    // name the second one holds.
    if (SSL_select_next_proto(&selected, outlen, c->alpn.data(), static_cast<unsigned>(c->alpn.size()), in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

// Mozilla's "intermediate" profile (https://wiki.mozilla.org/Security/Server_Side_TLS),
// without its DHE suites: TLS 1.2 with an ephemeral ECDH key exchange (forward
// secrecy) and an AEAD cipher only. No static-RSA key exchange, no CBC (the
// LUCKY13 family), no SHA-1 MACs. ECDSA suites first: a server with an ECDSA
// certificate uses those, one with an RSA certificate the ECDHE-RSA ones.
constexpr const char* default_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
// The TLS 1.3 suites of that profile (all three of RFC 8446's usual ones).
constexpr const char* default_tls13_ciphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

std::shared_ptr<context::impl> make_context(bool server) {
    auto c = std::make_shared<context::impl>();
    c->server = server;
    c->ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!c->ctx) throw_ssl("hop::tls::context: SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    if (SSL_CTX_set_cipher_list(c->ctx, default_tls12_ciphers) != 1 ||
        SSL_CTX_set_ciphersuites(c->ctx, default_tls13_ciphersuites) != 1) {
        throw_ssl("hop::tls::context: OpenSSL refuses hop's default cipher suites");
    }
    SSL_CTX_set_options(c->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                 SSL_MODE_RELEASE_BUFFERS);
    if (server) {
        SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_SERVER);
        static const unsigned char sid_ctx[] = "hop";
        SSL_CTX_set_session_id_context(c->ctx, sid_ctx, sizeof sid_ctx - 1);
        SSL_CTX_set_alpn_select_cb(c->ctx, alpn_select_callback, c.get());
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, nullptr);
        if (SSL_CTX_set_default_verify_paths(c->ctx) != 1) {
            throw_ssl("hop::tls::context::client: cannot load the system CA store");
        }
        SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c->ctx, new_session_callback);
    }
    return c;
}

}  // namespace

context context::client() { return context(make_context(false)); }

context context::server(const std::string& cert_chain_file, const std::string& private_key_file) {
    context c(make_context(true));
    c.load_cert_chain(cert_chain_file, private_key_file);
    return c;
}

context::~context() = default;

void context::load_ca_file(const std::string& pem_file) {
    if (pem_file.empty()) throw std::invalid_argument("hop::tls::context::load_ca_file: the file name is empty");
    if (SSL_CTX_load_verify_locations(m_impl->ctx, pem_file.c_str(), nullptr) != 1) {
        throw_ssl("hop::tls::context::load_ca_file: cannot load CA certificates from '" + pem_file + "'");
    }
}

void context::load_cert_chain(const std::string& cert_chain_file, const std::string& private_key_file) {
    const char* who = m_impl->server ? "hop::tls::context::server" : "hop::tls::context::load_cert_chain";
    if (cert_chain_file.empty() || private_key_file.empty()) {
        throw std::invalid_argument(std::string(who) + ": a file name is empty (certificate '" + cert_chain_file +
                                    "', key '" + private_key_file + "')");
    }
    if (SSL_CTX_use_certificate_chain_file(m_impl->ctx, cert_chain_file.c_str()) != 1) {
        throw_ssl(std::string(who) + ": cannot load the certificate chain '" + cert_chain_file + "'");
    }
    if (SSL_CTX_use_PrivateKey_file(m_impl->ctx, private_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
        throw_ssl(std::string(who) + ": cannot load the private key '" + private_key_file + "' (for the certificate '" +
                  cert_chain_file + "')");
    }
    if (SSL_CTX_check_private_key(m_impl->ctx) != 1) {
        throw_ssl(std::string(who) + ": the private key '" + private_key_file +
                  "' does not match the certificate '" + cert_chain_file + "'");
    }
}

void context::insecure_skip_verify() {
    m_impl->verify = false;
    SSL_CTX_set_verify(m_impl->ctx, SSL_VERIFY_NONE, nullptr);
}

bool context::verifies_peer() const noexcept { return m_impl->verify && !m_impl->server; }

void context::set_versions(version min, version max) {
    auto code = [](version v) { return v == version::tls1_2 ? TLS1_2_VERSION : TLS1_3_VERSION; };
    if (static_cast<int>(min) > static_cast<int>(max) || static_cast<int>(max) > 1) {
        throw std::invalid_argument("hop::tls::context::set_versions: min (" + std::to_string(static_cast<int>(min)) +
                                    ") is above max (" + std::to_string(static_cast<int>(max)) +
                                    ") or out of range (0: TLS 1.2, 1: TLS 1.3)");
    }
    SSL_CTX_set_min_proto_version(m_impl->ctx, code(min));
    SSL_CTX_set_max_proto_version(m_impl->ctx, code(max));
}

namespace {

/// The context's TLS 1.3 suites (`tls13`) or older ones, as an OpenSSL
/// list ("" for none).
std::string suite_names(SSL_CTX* ctx, bool tls13) {
    std::string names;
    const STACK_OF(SSL_CIPHER)* all = SSL_CTX_get_ciphers(ctx);
    for (int i = 0; all != nullptr && i < sk_SSL_CIPHER_num(all); ++i) {
        const SSL_CIPHER* c = sk_SSL_CIPHER_value(all, i);
        if ((std::strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0) != tls13) continue;
        if (!names.empty()) names += ':';
        names += SSL_CIPHER_get_name(c);
    }
    return names;
}

/// Sets a suite list with `set` (TLS 1.2's or 1.3's); on failure puts the
/// suites from before back and throws, naming `call`, the list and `hint`.
/// The restore is needed: OpenSSL may have changed the list already when it
/// reports that nothing matched (a TLS 1.2 list of unknown names leaves only
/// the TLS 1.3 suites), and OpenSSL 3 skips TLS 1.3 names it does not know,
/// so a list of nothing but those would quietly turn TLS 1.3 off.
void set_suites(SSL_CTX* ctx, std::string_view openssl_list, bool tls13, int (*set)(SSL_CTX*, const char*),
                std::string_view call, std::string_view hint) {
    const std::string list(openssl_list);
    const std::string before = suite_names(ctx, tls13);
    if (list.empty() || set(ctx, list.c_str()) != 1 || suite_names(ctx, tls13).empty()) {
        ERR_clear_error();
        set(ctx, before.c_str());
        ERR_clear_error();
        throw std::invalid_argument("hop::tls::context::" + std::string(call) + ": OpenSSL accepts no TLS " +
                                    (tls13 ? "1.3" : "1.2") + " cipher suite from '" + list + "' (" +
                                    std::string(hint) + ")");
    }
}

}  // namespace

void context::set_ciphers(std::string_view openssl_list) {
    set_suites(m_impl->ctx, openssl_list, false, SSL_CTX_set_cipher_list, "set_ciphers",
               "see `openssl ciphers -v '" + std::string(openssl_list) + "'`");
}

void context::set_ciphersuites(std::string_view openssl_list) {
    set_suites(m_impl->ctx, openssl_list, true, SSL_CTX_set_ciphersuites, "set_ciphersuites",
               "names such as TLS_AES_128_GCM_SHA256, separated by ':'");
}

void context::set_alpn(std::vector<std::string> protocols) {
    std::vector<unsigned char> wire;
    for (const auto& p : protocols) {
        if (p.empty() || p.size() > 255) {
            throw std::invalid_argument("hop::tls::context::set_alpn: a protocol name must be 1 to 255 bytes, not " +
                                        std::to_string(p.size()) + " ('" + p.substr(0, 40) + "')");
        }
        wire.push_back(static_cast<unsigned char>(p.size()));
        wire.insert(wire.end(), p.begin(), p.end());
    }
    // The same list again changes nothing and writes nothing: a context
    // already shaking hands on other threads (one server per loop sharing
    // it, each setting http/1.1 at bind) is only read.
    if (m_impl->alpn == wire) return;
    m_impl->alpn = wire;
    if (!m_impl->server) {
        // Note: 0 is success for this one.
        if (SSL_CTX_set_alpn_protos(m_impl->ctx, wire.data(), static_cast<unsigned>(wire.size())) != 0) {
            throw_ssl("hop::tls::context::set_alpn");
        }
    }
}

void context::set_session_tickets(bool on) {
    if (on) {
        SSL_CTX_clear_options(m_impl->ctx, SSL_OP_NO_TICKET);
    } else {
        SSL_CTX_set_options(m_impl->ctx, SSL_OP_NO_TICKET);
    }
}

void context::set_session_resumption(bool on) { m_impl->resume = on; }

bool context::is_server() const noexcept { return m_impl->server; }

// ---- stream ----------------------------------------------------------------

struct stream::impl {
    std::shared_ptr<context::impl> ctx;
    tcp_stream tcp;
    SSL* ssl = nullptr;
    std::string host;         // client: the name given; server: SNI after the handshake
    std::string session_key;  // client: host:port
    std::string peer;         // for messages

    // Read side: bytes from the socket that OpenSSL has not taken yet.
    std::unique_ptr<char[]> in;
    std::size_t in_size = in_small;  // in's size
    std::size_t in_begin = 0;
    std::size_t in_end = 0;
    bool in_big = false;  // a read filled `in`: the next one gets in_capacity

    // After a read: the buffer size for the next fill. A drained big buffer
    // goes back to small unless the last read filled it, so idle
    // connections hold 4 KiB (OpenSSL frees its own: RELEASE_BUFFERS).
    void settle_input() noexcept {
        if (in_begin != in_end) return;
        const std::size_t want = in_big ? in_capacity : in_small;
        in_big = false;
        if (want != in_size) {
            in.reset();
            in_size = want;
        }
    }
    bool eof = false;     // the socket said end of stream
    bool failed = false;  // a TLS error: the session is not resumed

    // Write side (see the top of the file).
    std::string out;
    std::string sending;
    std::size_t sent = 0;

    // The three locks, in the order they may be taken (a coroutine that
    // holds one may wait for a later one, never for an earlier one):
    //
    //   write_mutex   the writer's turn: held across a whole write_some /
    //                 write_all (OpenSSL wants a write it answered
    //                 WANT_READ / WANT_WRITE retried with the same bytes,
    //                 so no other SSL_write / SSL_shutdown may come
    //                 between), and across SSL_shutdown; held by the
    //                 handshake.
    //       |
    //   read_mutex    the reader's turn and the socket's read side: held
    //                 across a whole read_some, across shutdown's drain,
    //                 by the handshake, and by a writer whose SSL_write
    //                 needs the peer's records first (openssl #11211).
    //                 Only its holder fills m_in.
    //       |
    //   send_mutex    the socket's write side (m_sending / m_sent): held
    //                 across flush() only. Its holder waits for nothing
    //                 but the socket.
    //
    // Who takes which (drive() does the waiting ones):
    //   reader   read_mutex; then send_mutex when OpenSSL's output is full
    //            (WANT_WRITE); try_lock(send_mutex) to send what SSL_read
    //            queued (never waits).
    //   writer   write_mutex; then send_mutex to send (WANT_WRITE, and
    //            after each SSL_write); on WANT_READ, after sending,
    //            read_mutex, then send_mutex again once the write is done.
    //   handshake  write_mutex and read_mutex throughout (nobody else
    //            can hold them yet), send_mutex to send.
    //   shutdown   write_mutex then send_mutex (close_notify out), lets both
    //            go, then read_mutex (the drain) then send_mutex.
    //   try_write, shutdown(0)  take nothing: they act only when neither
    //            write_mutex nor send_mutex is held (no write pending in
    //            OpenSSL, no send in flight), and never wait.
    //
    // Why this cannot deadlock: every wait is for a lock later in the order
    // than any the waiter holds, so a cycle of waiters would need some
    // coroutine to wait for an earlier lock than one it holds. The holder
    // of send_mutex, last in the order, waits only for the socket (and a
    // stop request or a timeout ends that). (With a reader that waited for
    // the writer's lock on WANT_WRITE and a writer that waited for the
    // reader's on WANT_READ, the two could wait for each other.) drive()
    // asserts (HOP_ASSERT) that its caller holds what its role says, and
    // fill() that it runs under read_mutex.
    async_mutex write_mutex;
    async_mutex read_mutex;
    async_mutex send_mutex;

    impl(std::shared_ptr<context::impl> c, tcp_stream t) : ctx(std::move(c)), tcp(std::move(t)) {}
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
        // OpenSSL drops the session of a connection freed without
        // close_notify (a rule from the days of truncation attacks on
        // SSLv3); a connection that ended without an error keeps its
        // session resumable, as browsers and curl expect.
        if (ssl && !failed && SSL_is_init_finished(ssl)) SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(ssl);  // frees the BIO too
    }

    void make_ssl(const char* who);
    task<void> handshake(std::string who);
    task<bool> fill();
    task<void> flush(bool wait);
    [[noreturn]] void fail(const std::string& who, int ssl_error);

    // What a caller of drive() is, which says what it holds on entry (see
    // the three locks above) and what it does at the ends.
    enum class role : std::uint8_t {
        handshake,  // holds write_mutex and read_mutex; on an error sends our alert first
        reader,     // holds read_mutex; SSL_ERROR_ZERO_RETURN is the end
        writer,     // holds write_mutex; sends after each call that succeeds
        drain,      // shutdown: holds read_mutex; errors end it quietly
    };
    // How a driven call ended (the errors throw, except for role::drain).
    enum class outcome : std::uint8_t {
        done,         // the call returned 1
        close_notify, // the peer's close_notify (reader, drain)
        closed,       // the socket ended first (FIN): the caller says what that means
        failed,       // drain only: an error, nothing thrown
    };
    // Names the operation in messages: `who` + " " + `toward` + peer, or
    // `who` alone when toward is null (the handshake's name has the peer).
    struct op_name {
        std::string_view who;
        const char* toward = nullptr;  // "to" / "from"
    };
    std::string text(op_name n) const {
        return n.toward ? std::string(n.who) + " " + n.toward + " " + peer : std::string(n.who);
    }

    template <class Call>
    task<outcome> drive(role r, op_name name, Call& call);
};

namespace {

// ---- the BIO between OpenSSL and the stream's buffers ----------------------

int bio_write(BIO* b, const char* data, int len) {
    auto* s = static_cast<stream::impl*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (s->out.size() >= out_high_water) {
        BIO_set_retry_write(b);
        return -1;
    }
    s->out.append(data, static_cast<std::size_t>(len));
    return len;
}

int bio_read(BIO* b, char* data, int len) {
    auto* s = static_cast<stream::impl*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    const std::size_t avail = s->in_end - s->in_begin;
    if (avail == 0) {
        BIO_set_retry_read(b);  // also at the socket's end: the stream decides what that means
        return -1;
    }
    const std::size_t n = std::min(avail, static_cast<std::size_t>(len));
    std::memcpy(data, s->in.get() + s->in_begin, n);
    s->in_begin += n;
    if (s->in_begin == s->in_end) s->in_begin = s->in_end = 0;
    return static_cast<int>(n);
}

long bio_ctrl(BIO* b, int cmd, long, void*) {
    auto* s = static_cast<stream::impl*>(BIO_get_data(b));
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return s ? static_cast<long>(s->in_end - s->in_begin) : 0;
    case BIO_CTRL_WPENDING:
        return s ? static_cast<long>(s->out.size()) : 0;
    default:
        return 0;
    }
}

int bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

BIO_METHOD* hop_bio_method() {
    static BIO_METHOD* m = [] {
        BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hop tls stream");
        if (!bm) throw_ssl("hop::tls: BIO_meth_new failed");
        BIO_meth_set_write(bm, bio_write);
        BIO_meth_set_read(bm, bio_read);
        BIO_meth_set_ctrl(bm, bio_ctrl);
        BIO_meth_set_create(bm, bio_create);
        return bm;
    }();
    return m;
}

int new_session_callback(SSL* ssl, SSL_SESSION* session) {
    auto* s = static_cast<stream::impl*>(SSL_get_app_data(ssl));
    if (!s || !s->ctx->resume || s->session_key.empty()) return 0;
    s->ctx->store_session(s->session_key, session);
    return 1;  // we keep the reference
}

}  // namespace

void stream::impl::make_ssl(const char* who) {
    ssl = SSL_new(ctx->ctx);
    if (!ssl) throw_ssl(std::string(who) + ": SSL_new failed");
    BIO* b = BIO_new(hop_bio_method());
    if (!b) throw_ssl(std::string(who) + ": BIO_new failed");
    BIO_set_data(b, this);
    SSL_set_bio(ssl, b, b);
    SSL_set_app_data(ssl, this);
}

void stream::impl::fail(const std::string& who, int ssl_error) {
    failed = true;
    std::string reasons = take_ssl_errors();
    const long verify = SSL_get_verify_result(ssl);
    std::string why;
    if (verify != X509_V_OK && ssl_error == SSL_ERROR_SSL && !SSL_is_server(ssl)) {
        why = "certificate verify failed: " + std::string(X509_verify_cert_error_string(verify));
        throw error(who + ": " + why, verify);
    }
    if (reasons.empty()) {
        why = ssl_error == SSL_ERROR_SYSCALL ? "the connection failed" : "error " + std::to_string(ssl_error);
    } else {
        why = reasons;
    }
    throw error(who + ": " + why);
}

task<bool> stream::impl::fill() {
    HOP_ASSERT(read_mutex.is_locked(), "only the holder of read_mutex fills m_in");
    if (eof) co_return false;
    // OpenSSL asks for more only once it took all there was.
    in_begin = in_end = 0;
    if (!in) {
        in.reset(new char[in_size]);  // not zeroed: it is read into
    }
    const std::size_t n = co_await tcp.read_some(std::span<char>(in.get(), in_size));
    if (n == 0) {
        eof = true;
        co_return false;
    }
    in_end = n;
    if (n == in_size) in_big = true;  // bulk data: the big buffer from the next read on
    co_return true;
}

// Sends what OpenSSL queued, as the holder of send_mutex: waits for it
// (`wait`), or sends only if it is free (the holder sends everything
// before it lets go, so records left to it go out all the same).
task<void> stream::impl::flush(bool wait) {
    async_mutex::scoped_lock lock;
    if (wait) {
        lock = co_await send_mutex.lock();
    } else {
        if (out.empty()) co_return;
        lock = send_mutex.try_lock();
        if (!lock.owns_lock()) co_return;
    }
    while (true) {
        if (sent == sending.size()) {
            if (out.empty()) {
                if (sending.capacity() > in_capacity) {  // after a bulk write
                    std::string().swap(sending);
                    sent = 0;
                }
                co_return;
            }
            sending.clear();
            sent = 0;
            sending.swap(out);
        }
        const std::size_t n = co_await tcp.write_some(std::string_view(sending).substr(sent));
        sent += n;
    }
}

// Runs `call` (an SSL call: 1 is success, else SSL_get_error says why)
// until it is done, as `r` (which says what the caller holds: see the
// three locks at stream::impl): WANT_WRITE sends what OpenSSL queued,
// WANT_READ sends it and reads more from the socket, a TLS error throws
// hop::tls::error naming `name` and the peer. The caller turns
// outcome::closed (the socket ended first) into its own error.
template <class Call>
task<stream::impl::outcome> stream::impl::drive(role r, op_name name, Call& call) {
    const bool writes = r == role::handshake || r == role::writer;
    HOP_ASSERT(!writes || write_mutex.is_locked(), "the handshake and the writer hold write_mutex");
    HOP_ASSERT(r == role::writer || read_mutex.is_locked(), "the handshake, the reader and the drain hold read_mutex");
    // The writer's turn at reading, taken on WANT_READ after sending: its
    // wait comes after write_mutex in the order, and it holds no send_mutex.
    async_mutex::scoped_lock read_turn;
    while (true) {
        ERR_clear_error();
        const int ret = call();
        if (ret == 1) {
            read_turn.unlock();
            // The writer's records, or a KeyUpdate answer or the like from a
            // reader: the reader sends it unless a sender will.
            if (writes || !out.empty()) co_await flush(writes);
            co_return outcome::done;
        }
        const int e = SSL_get_error(ssl, ret);
        if (e == SSL_ERROR_WANT_READ) {
            // No data yet (or a record without any: a session ticket, a key
            // update): send what OpenSSL queued, then read on.
            if (writes || !out.empty()) co_await flush(writes);
            if (r == role::writer && !read_turn.owns_lock()) {
                // OpenSSL needs the peer's records first (openssl #11211).
                // A reader, if there is one, brings them in; then we do.
                read_turn = co_await read_mutex.lock();
                continue;
            }
            if (!co_await fill()) co_return outcome::closed;
        } else if (e == SSL_ERROR_WANT_WRITE) {
            co_await flush(true);
        } else if (e == SSL_ERROR_ZERO_RETURN && (r == role::reader || r == role::drain)) {
            co_return outcome::close_notify;
        } else if (r == role::drain) {
            co_return outcome::failed;
        } else {
            if (r == role::handshake) {
                // Send our alert (if any), so the peer learns why; best
                // effort: OpenSSL's reason is what we report.
                try {
                    co_await flush(true);
                } catch (...) {
                }
            }
            fail(text(name), e);
        }
    }
}

task<void> stream::impl::handshake(std::string who) {
    // Nobody else holds these yet: taken so that drive's rules hold here too.
    auto w = co_await write_mutex.lock();
    auto rd = co_await read_mutex.lock();
    auto call = [this] { return SSL_do_handshake(ssl); };
    const op_name name{who};
    hop::detail::tls_handshake_count counted(ctx->server);  // hop::metrics
    if (co_await drive(role::handshake, name, call) == outcome::closed) {
        std::string reasons = take_ssl_errors();
        throw error(who + ": the peer closed the connection during the handshake" +
                    (reasons.empty() ? std::string() : " (" + reasons + ")"));
    }
    counted.ok(SSL_session_reused(ssl) == 1);
}

// ---- stream: making one ----------------------------------------------------

stream::stream() noexcept = default;
stream::stream(std::unique_ptr<impl> p) noexcept : m_impl(std::move(p)) {}
stream::stream(stream&&) noexcept = default;
stream& stream::operator=(stream&&) noexcept = default;
stream::~stream() = default;

task<stream> stream::connect(context ctx, tcp_stream tcp, std::string host_name) {
    constexpr const char* who = "hop::tls::stream::connect";
    if (!ctx.m_impl) throw std::invalid_argument(std::string(who) + ": the context is empty (moved from)");
    if (ctx.m_impl->server) {
        throw std::invalid_argument(std::string(who) +
                                    ": the context is a server context (context::server); use context::client()");
    }
    if (!tcp.is_open()) throw std::invalid_argument(std::string(who) + ": the tcp_stream is not open");
    const bool bad_byte = std::any_of(host_name.begin(), host_name.end(), [](char ch) {
        const auto u = static_cast<unsigned char>(ch);
        return u <= 0x20 || u == 0x7f || ch == '/';
    });
    if (host_name.size() > 253 || bad_byte) {
        throw std::invalid_argument(std::string(who) + ": '" + printable(host_name.substr(0, 80)) +
                                    "' is not a host name");
    }
    if (host_name.empty() && ctx.m_impl->verify) {
        throw std::invalid_argument(std::string(who) +
                                    ": the host name is empty, so the certificate cannot be checked: give the "
                                    "server's name (or call context::insecure_skip_verify)");
    }
    auto s = std::make_unique<impl>(ctx.m_impl, std::move(tcp));
    s->make_ssl(who);
    s->host = host_name;
    const std::string ep = endpoint_text(s->tcp);
    s->peer = host_name.empty() ? ep : host_name + " (" + ep + ")";
    SSL_set_connect_state(s->ssl);
    const bool ip = is_ip_literal(host_name);
    if (!host_name.empty() && !ip && SSL_set_tlsext_host_name(s->ssl, host_name.c_str()) != 1) {
        throw_ssl(std::string(who) + ": cannot send '" + host_name + "' as the server name");
    }
    if (s->ctx->verify) {
        const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), host_name.c_str())
                          : SSL_set1_host(s->ssl, host_name.c_str());
        if (ok != 1) throw_ssl(std::string(who) + ": cannot check the certificate against '" + host_name + "'");
    }
    if (s->ctx->resume) {
        try {
            s->session_key = host_name + "|" + std::to_string(s->tcp.remote_endpoint().port());
        } catch (...) {
            s->session_key = host_name;
        }
        if (SSL_SESSION* sess = s->ctx->find_session(s->session_key)) {
            SSL_set_session(s->ssl, sess);
            SSL_SESSION_free(sess);
        }
    }
    std::string what = std::string(who) + " to " + s->peer;
    try {
        co_await s->handshake(what);
    } catch (const error&) {
        if (!s->session_key.empty()) s->ctx->forget_session(s->session_key);
        throw;
    }
    co_return stream(std::move(s));
}

task<stream> stream::accept(context ctx, tcp_stream tcp) {
    constexpr const char* who = "hop::tls::stream::accept";
    if (!ctx.m_impl) throw std::invalid_argument(std::string(who) + ": the context is empty (moved from)");
    if (!ctx.m_impl->server) {
        throw std::invalid_argument(std::string(who) +
                                    ": the context is a client context; use context::server(cert, key)");
    }
    if (!tcp.is_open()) throw std::invalid_argument(std::string(who) + ": the tcp_stream is not open");
    auto s = std::make_unique<impl>(ctx.m_impl, std::move(tcp));
    s->make_ssl(who);
    s->peer = endpoint_text(s->tcp);
    SSL_set_accept_state(s->ssl);
    co_await s->handshake(std::string(who) + " from " + s->peer);
    if (const char* sni = SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name)) s->host = sni;
    co_return stream(std::move(s));
}

// ---- stream: reading and writing ---------------------------------------------

namespace {
stream::impl& open_impl(const std::unique_ptr<stream::impl>& p, const char* who) {
    if (!p || !p->ssl) throw std::logic_error(std::string(who) + ": the stream is empty (default-made or moved from)");
    if (!p->tcp.is_open()) throw std::logic_error(std::string(who) + ": the stream is closed");
    return *p;
}
}  // namespace

task<std::size_t> stream::read_some_impl(void* data, std::size_t size) {
    constexpr const char* who = "hop::tls::stream::read_some";
    impl& s = open_impl(m_impl, who);
    if (size == 0) co_return 0;
    auto lock = co_await s.read_mutex.lock();
    std::size_t n = 0;
    auto call = [&] { return SSL_read_ex(s.ssl, data, size, &n); };
    const impl::op_name name{who, "from"};
    const impl::outcome o = co_await s.drive(impl::role::reader, name, call);
    if (o == impl::outcome::closed) {
        ERR_clear_error();
        throw truncated_error(s.text(name) +
                              ": the peer closed the connection without close_notify (truncated)");
    }
    if (o == impl::outcome::close_notify) co_return 0;
    s.settle_input();
    co_return n;
}

task<std::size_t> stream::read_exact_impl(void* data, std::size_t size) {
    std::size_t done = 0;
    auto* p = static_cast<char*>(data);
    while (done < size) {
        const std::size_t n = co_await read_some_impl(p + done, size - done);
        if (n == 0) {
            throw end_of_stream_error("hop::tls::stream::read_exact: the peer closed the stream after " +
                                          std::to_string(done) + " of " + std::to_string(size) + " bytes",
                                      done);
        }
        done += n;
    }
    co_return done;
}

task<std::size_t> stream::write_impl(const void* data, std::size_t size, bool all) {
    const char* who = all ? "hop::tls::stream::write_all" : "hop::tls::stream::write_some";
    impl& s = open_impl(m_impl, who);
    if (size == 0) co_return 0;
    auto lock = co_await s.write_mutex.lock();
    const auto* p = static_cast<const char*>(data);
    std::size_t done = 0;
    std::size_t n = 0;
    auto call = [&] { return SSL_write_ex(s.ssl, p + done, size - done, &n); };
    const impl::op_name name{who, "to"};
    while (done < size) {
        if (co_await s.drive(impl::role::writer, name, call) == impl::outcome::closed) {
            throw truncated_error(s.text(name) +
                                  ": the peer closed the connection without close_notify (truncated)");
        }
        done += n;
        if (!all) break;
    }
    co_return done;
}

namespace {

// Hands what OpenSSL queued to the socket without waiting (one
// non-blocking send); true if all of it went. For last words only: the
// caller checked that no write is pending in OpenSSL and no send is in
// flight (write_mutex and send_mutex are free).
bool send_queued_now(stream::impl& s) noexcept {
    try {
        std::string wire = s.sending.substr(s.sent) + s.out;
        s.sending.clear();
        s.sent = 0;
        s.out.clear();
        if (wire.empty()) return true;
        const ssize_t r = ::send(s.tcp.native_handle(), wire.data(), wire.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        return r == static_cast<ssize_t>(wire.size());
    } catch (...) {
        return false;
    }
}

// Reads and drops what the kernel holds for us, without waiting: closing a
// socket with unread bytes makes the kernel send a reset, which destroys
// what it had not sent yet (our last records, close_notify). The unread
// bytes are typically TLS 1.3 session tickets nobody asked to read.
void discard_unread(stream::impl& s) noexcept {
    char sink[4096];
    for (int i = 0; i < 64; ++i) {
        const ssize_t r = ::recv(s.tcp.native_handle(), sink, sizeof sink, MSG_DONTWAIT);
        if (r <= 0) break;
    }
}

// shutdown()'s waiting part: close_notify out (then FIN), then the peer's
// close_notify in, dropping data.
task<void> exchange_close_notify(stream::impl& s) {
    int r = 0;
    {
        auto w = co_await s.write_mutex.lock();
        ERR_clear_error();
        r = SSL_shutdown(s.ssl);  // queues close_notify: 0 sent, 1 both ways done
        co_await s.flush(true);
        s.tcp.shutdown_write();
    }
    if (r == 1) co_return;
    auto rl = co_await s.read_mutex.lock();
    char sink[4096];
    std::size_t n = 0;
    auto call = [&] { return SSL_read_ex(s.ssl, sink, sizeof sink, &n); };
    const stream::impl::op_name name{"hop::tls::stream::shutdown"};
    // Until the peer's close_notify, the socket's end or an error.
    while (co_await s.drive(stream::impl::role::drain, name, call) ==
           stream::impl::outcome::done) {
    }
}

}  // namespace

task<void> stream::shutdown(std::chrono::milliseconds wait_for_peer) {
    if (wait_for_peer.count() < 0) {
        throw std::invalid_argument("hop::tls::stream::shutdown: wait_for_peer is negative (" +
                                    std::to_string(wait_for_peer.count()) + " ms)");
    }
    if (!m_impl || !m_impl->ssl || !m_impl->tcp.is_open()) co_return;
    impl& s = *m_impl;
    bool cancelled = false;
    if (wait_for_peer.count() == 0) {
        // close_notify if it can go at once; nothing waits.
        if (!s.write_mutex.is_locked() && !s.send_mutex.is_locked()) {
            ERR_clear_error();
            SSL_shutdown(s.ssl);
            send_queued_now(s);
        }
    } else {
        // Everything, the send of close_notify included (a peer that does
        // not read may never make room for it), within wait_for_peer.
        try {
            co_await with_timeout(wait_for_peer, exchange_close_notify(s));
        } catch (const cancelled_error&) {
            cancelled = true;
        } catch (...) {
            // timed out, the peer left, or it sent garbage: we close anyway
        }
    }
    ERR_clear_error();
    if (!s.read_mutex.is_locked()) discard_unread(s);
    s.tcp.close();
    if (cancelled) throw cancelled_error("hop::tls::stream::shutdown: cancelled (the socket is closed)");
}

bool stream::try_write(std::string_view bytes) noexcept {
    if (!is_open() || bytes.empty()) return false;
    impl& s = *m_impl;
    // A write pending in OpenSSL, or a send in flight: the socket is its own.
    if (s.write_mutex.is_locked() || s.send_mutex.is_locked()) return false;
    ERR_clear_error();
    std::size_t n = 0;
    if (SSL_write_ex(s.ssl, bytes.data(), bytes.size(), &n) != 1 || n != bytes.size()) {
        ERR_clear_error();
        return false;
    }
    return send_queued_now(s);
}

void stream::close() noexcept {
    if (m_impl) m_impl->tcp.close();
}

bool stream::is_open() const noexcept { return m_impl && m_impl->ssl && m_impl->tcp.is_open(); }

std::string_view stream::alpn_protocol() const noexcept {
    if (!m_impl || !m_impl->ssl) return {};
    const unsigned char* p = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(m_impl->ssl, &p, &len);
    return p ? std::string_view(reinterpret_cast<const char*>(p), len) : std::string_view();
}

std::string_view stream::server_name() const noexcept { return m_impl ? std::string_view(m_impl->host) : ""; }

std::string_view stream::protocol_version() const noexcept {
    return m_impl && m_impl->ssl ? std::string_view(SSL_get_version(m_impl->ssl)) : std::string_view();
}

std::string_view stream::cipher() const noexcept {
    if (!m_impl || !m_impl->ssl) return {};
    const char* c = SSL_get_cipher_name(m_impl->ssl);
    return c ? std::string_view(c) : std::string_view();
}

bool stream::session_reused() const noexcept { return m_impl && m_impl->ssl && SSL_session_reused(m_impl->ssl) == 1; }

tcp_stream& stream::lower() {
    if (!m_impl) throw std::logic_error("hop::tls::stream::lower: the stream is empty (default-made or moved from)");
    return m_impl->tcp;
}
const tcp_stream& stream::lower() const {
    if (!m_impl) throw std::logic_error("hop::tls::stream::lower: the stream is empty (default-made or moved from)");
    return m_impl->tcp;
}

::ssl_st* stream::native_handle() const noexcept { return m_impl ? m_impl->ssl : nullptr; }

}  // namespace hop::tls
