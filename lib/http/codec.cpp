#include "codec.hpp"
#include "grammar.hpp"

#include <llhttp.h>

#include <hop/detail/assert.hpp>

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <ctime>
#include <cstdio>
#include <stdexcept>
#include <utility>

namespace hop::http::detail {

int parse_error::status() const noexcept {
    switch (m_kind) {
    case parse_failure::header_too_large: return 431;
    case parse_failure::body_too_large: return 413;
    case parse_failure::uri_too_long: return 414;
    case parse_failure::version_not_supported: return 505;
    case parse_failure::bad_message: break;
    }
    return 400;
}

namespace {

// llhttp 8.1 accepts obs-fold even in strict mode: a field line continued
// by a line that starts with SP or HTAB, which it joins into the value.
// RFC 9112 5.2 lets a server reject it (400), and a proxy that unfolds
// differently is a smuggling vector, so it is refused. The scanner watches
// the bytes of a head or a trailer section, ahead of llhttp, and says where
// the first fold is, so llhttp is given only the bytes before it: errors
// then come in stream order however the input is cut.
struct fold_scanner {
    bool active = true;      // in a head or trailer section
    bool last_was_lf = false;
    bool seen_line = false;  // a non-empty line: an empty one now ends the section

    /// Where in `in` the first fold begins, or npos; advances over `in`
    /// when `commit`.
    std::size_t scan(std::string_view in, bool commit) {
        fold_scanner st = *this;
        std::size_t at = std::string_view::npos;
        for (std::size_t i = 0; i < in.size() && st.active; ++i) {
            char c = in[i];
            if (st.last_was_lf) {
                if (c == ' ' || c == '\t') {
                    at = i;
                    break;
                }
                if ((c == '\r' || c == '\n') && st.seen_line) st.active = false;  // the blank line
                else if (c != '\r' && c != '\n') st.seen_line = true;
            } else if (c != '\r' && c != '\n') {
                st.seen_line = true;
            }
            st.last_was_lf = c == '\n';
        }
        if (commit) *this = st;
        return at;
    }

    void start_section(bool after_lf) { *this = fold_scanner{true, after_lf, after_lf}; }
};

}  // namespace

// How the parser hands over one event at a time: every callback that ends
// an event (on_headers_complete, on_body, on_message_complete) returns
// HPE_PAUSED, so llhttp_execute() stops right after it and
// llhttp_get_error_pos() says how far it read; the next parse() calls
// llhttp_resume() and goes on from there. Once llhttp has failed it keeps
// failing, so a parse_error is stored and thrown again.
struct parser::impl {
    llhttp_t ll;
    parser::kind kind;
    parser::limits lim;

    message_head head;
    std::string_view body;
    std::string field_name;
    std::string field_value;
    bool in_trailers = false;
    bool url_complete = false;  // a request's target has ended

    // The event the last execute stopped at, and a message_end that
    // followed a head in the same run (a message without a body, where
    // on_headers_complete told llhttp to skip it and so did not pause).
    event due = event::need_more;
    bool end_due = false;

    bool skip_next_body = false;   // expect_no_body()
    bool started = false;          // first byte seen, message_end not yet handed over
    bool in_message = false;       // head handed over, message_end not yet
    bool keep_alive = false;       // of the last complete message
    bool upgraded = false;         // the last message switched protocols
    bool closed = false;           // finish() ended the stream
    bool finishing = false;        // inside llhttp_finish(): no pausing
    std::size_t head_bytes = 0;
    std::uint64_t body_bytes = 0;
    std::uint64_t offset = 0;      // bytes consumed over the whole stream
    fold_scanner fold;              // over the head and the trailer section
    bool last_chunk_seen = false;  // on_chunk_header paused at the last chunk
    bool in_trailer_section = false;
    std::size_t trailer_bytes = 0;
    std::optional<parse_error> failure;
    const char* refused_at = nullptr;  // where a callback's refusal applies, if not llhttp's position
    std::optional<parse_error> deferred;  // thrown by the next call
    bool deferred_where = false;          // its message names the offset

    impl(parser::kind k, parser::limits l) : kind(k), lim(l) {
        llhttp_init(&ll, k == parser::kind::request ? HTTP_REQUEST : HTTP_RESPONSE, &settings());
        ll.data = this;
    }

    static impl& of(llhttp_t* p) noexcept { return *static_cast<impl*>(p->data); }

    [[noreturn]] void fail(parse_failure k, const std::string& what) {
        failure.emplace(k, what);
        throw *failure;
    }

    // A callback refuses the message: remembered here, thrown by parse().
    int refuse(parse_failure k, const std::string& what) {
        failure.emplace(k, what);
        return HPE_USER;
    }

    static const llhttp_settings_t& settings() noexcept {
        static const llhttp_settings_t s = [] {
            llhttp_settings_t st;
            llhttp_settings_init(&st);
            st.on_message_begin = on_message_begin;
            st.on_url = on_url;
            st.on_url_complete = on_url_complete;
            st.on_status = on_status;
            st.on_header_field = on_header_field;
            st.on_header_value = on_header_value;
            st.on_header_value_complete = on_header_value_complete;
            st.on_headers_complete = on_headers_complete;
            st.on_body = on_body;
            st.on_chunk_header = on_chunk_header;
            st.on_message_complete = on_message_complete;
            return st;
        }();
        return s;
    }

    static int on_message_begin(llhttp_t* p) {
        impl& self = of(p);
        self.head = message_head{};
        self.body = {};
        self.field_name.clear();
        self.field_value.clear();
        self.in_trailers = false;
        self.url_complete = false;
        self.started = true;
        self.body_bytes = 0;
        return 0;
    }

    static int on_url(llhttp_t* p, const char* at, std::size_t n) {
        of(p).head.target.append(at, n);
        return 0;
    }

    static int on_url_complete(llhttp_t* p) {
        of(p).url_complete = true;
        return 0;
    }

    static int on_status(llhttp_t* p, const char* at, std::size_t n) {
        of(p).head.reason.append(at, n);
        return 0;
    }

    static int on_header_field(llhttp_t* p, const char* at, std::size_t n) {
        of(p).field_name.append(at, n);
        return 0;
    }

    static int on_header_value(llhttp_t* p, const char* at, std::size_t n) {
        of(p).field_value.append(at, n);
        return 0;
    }

    static int on_header_value_complete(llhttp_t* p) {
        impl& self = of(p);
        // llhttp drops the whitespace before a value but keeps what follows
        // it; RFC 9110 5.5 says neither is part of the value.
        while (!self.field_value.empty() && (self.field_value.back() == ' ' || self.field_value.back() == '\t'))
            self.field_value.pop_back();
        // Strict llhttp already refuses NUL in a value; kept because a NUL
        // that got through would cut the value short for C consumers.
        if (self.field_value.find('\0') != std::string::npos)
            return self.refuse(parse_failure::bad_message, "NUL byte in the value of header field \"" +
                                                               self.field_name + "\"");
        auto& target = self.in_trailers ? self.head.trailers : self.head.headers;
        target.add_unchecked(std::move(self.field_name), std::move(self.field_value));
        self.field_name.clear();
        self.field_value.clear();
        return 0;
    }

    static int on_headers_complete(llhttp_t* p) {
        impl& self = of(p);
        message_head& h = self.head;
        h.version_major = p->http_major;
        h.version_minor = p->http_minor;
        h.keep_alive = llhttp_should_keep_alive(p) != 0;
        h.chunked = (p->flags & F_CHUNKED) != 0;
        if (p->flags & F_CONTENT_LENGTH) h.content_length = p->content_length;
        h.upgrade = p->upgrade != 0;
        self.in_trailers = true;
        // llhttp takes any single-digit version ("HTTP/2.0"); this framing is 1.x only.
        // A request in another version gets 505 (as nginx answers HTTP/2.0).
        if (h.version_major != 1)
            return self.refuse(self.kind == parser::kind::request && h.version_major > 1
                                   ? parse_failure::version_not_supported
                                                                   : parse_failure::bad_message,
                               "HTTP/" + std::to_string(h.version_major) + "." +
                                                               std::to_string(h.version_minor) +
                                                               " is not HTTP/1.x");

        bool skip_body = false;
        if (self.kind == parser::kind::request) {
            h.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
            if (auto e = h.headers.get("Expect"); e && iequals(*e, "100-continue")) h.expect_continue = true;
        } else {
            h.status = p->status_code;
            // llhttp 8.1 takes any number of digits ("HTTP/1.1 20 OK").
            if (h.status < 100 || h.status > 999)
                return self.refuse(parse_failure::bad_message,
                                   "status code " + std::to_string(h.status) + " is not three digits");
            // A 1xx is not the answer yet: the skip is for the final response.
            if (h.status >= 200 && self.skip_next_body) {
                self.skip_next_body = false;
                skip_body = true;
            }
            // RFC 9112 6.3: 1xx, 204 and 304 never have a body, whatever
            // their fields say; llhttp 8.1 would read a 304's Content-Length.
            if (h.status < 200 || h.status == 204 || h.status == 304) skip_body = true;
        }

        if (skip_body) {
            // llhttp sets F_SKIPBODY only after this returns 1; with it, a
            // response without a length need not end at close.
            auto flags = p->flags;
            p->flags |= F_SKIPBODY;
            h.keep_alive = llhttp_should_keep_alive(p) != 0;
            p->flags = flags;
        }

        if (!skip_body && h.content_length && !h.chunked && *h.content_length > self.lim.max_body_bytes)
            return self.refuse(parse_failure::body_too_large,
                               "Content-Length " + std::to_string(*h.content_length) + " exceeds the limit of " +
                                   std::to_string(self.lim.max_body_bytes) + " bytes");

        self.due = event::head;
        // 1 tells llhttp the message has no body (a response to HEAD); it
        // then completes the message at once and on_message_complete pauses.
        return skip_body ? 1 : HPE_PAUSED;
    }

    static int on_body(llhttp_t* p, const char* at, std::size_t n) {
        impl& self = of(p);
        if (n == 0) return 0;  // llhttp closes an open span at the end of every run
        std::uint64_t left = self.lim.max_body_bytes - self.body_bytes;
        if (n > left) {
            // Reported where the limit was crossed, not where llhttp's span
            // ended; what fits is handed over first, so the caller sees the
            // same bytes however the input was cut.
            self.refused_at = at + left;
            std::string why = "body exceeds the limit of " + std::to_string(self.lim.max_body_bytes) + " bytes";
            if (left == 0) return self.refuse(parse_failure::body_too_large, why);
            self.deferred.emplace(parse_failure::body_too_large, why);
            n = static_cast<std::size_t>(left);
        }
        self.body_bytes += n;
        self.body = std::string_view(at, n);
        self.due = event::body;
        return HPE_PAUSED;
    }

    // The last chunk ("0\r\n"): trailers follow. Pauses (not an event) so
    // run() can start watching them for obs-fold.
    static int on_chunk_header(llhttp_t* p) {
        impl& self = of(p);
        if (p->content_length != 0) return 0;
        self.last_chunk_seen = true;
        return HPE_PAUSED;
    }

    static int on_message_complete(llhttp_t* p) {
        impl& self = of(p);
        self.keep_alive = !self.finishing && !self.head.upgrade && llhttp_should_keep_alive(p) != 0;
        self.upgraded = self.head.upgrade;
        if (self.due == event::head)
            self.end_due = true;
        else
            self.due = event::message_end;
        return self.finishing ? 0 : HPE_PAUSED;
    }

    // Bytes a section may still take, plus the one that goes over.
    std::size_t room(std::size_t used_so_far) const noexcept {
        std::size_t left = lim.max_header_bytes - used_so_far;  // used_so_far <= the limit
        return left == SIZE_MAX ? left : left + 1;
    }

    std::string where(const char* data, const char* pos) const {
        std::uint64_t at = offset + static_cast<std::uint64_t>(pos && pos >= data ? pos - data : 0);
        return " at byte " + std::to_string(at);
    }

    // Hands over the event the last run stopped at.
    event deliver(event e) {
        switch (e) {
        case event::head:
            in_message = true;
            break;
        case event::message_end:
            in_message = false;
            started = false;
            head_bytes = 0;
            fold.start_section(false);
            in_trailer_section = false;
            break;
        case event::body:
        case event::need_more:
            break;
        }
        return e;
    }

    event run(std::string_view in, std::size_t& consumed) {
        consumed = 0;
        if (failure) throw *failure;
        throw_deferred();
        if (end_due) {
            end_due = false;
            return deliver(event::message_end);
        }
        if ((closed || upgraded) && in.empty()) return event::need_more;
        if (closed) fail(parse_failure::bad_message, "bytes after the connection was closed");
        if (upgraded)
            fail(parse_failure::bad_message, "bytes after a protocol upgrade: the connection is no longer HTTP/1.x");

        // Never a null pointer: llhttp restarts an open span at `data`.
        const char* data = in.data() ? in.data() : "";
        due = event::need_more;
        body = {};
        std::size_t pos = 0;
        for (;;) {
            if (llhttp_get_errno(&ll) == HPE_PAUSED) llhttp_resume(&ll);
            std::size_t fold_at = fold.scan(in.substr(pos), false);
            std::size_t len = fold_at == std::string_view::npos ? in.size() - pos : fold_at;
            // A head or trailer section gets at most one byte past its
            // limit, so 431 comes in stream order too (and a huge head is
            // not parsed to its end first).
            bool counting_head = !in_message && due == event::need_more;
            if (counting_head) len = std::min(len, room(head_bytes));
            if (in_trailer_section) len = std::min(len, room(trailer_bytes));
            last_chunk_seen = false;
            refused_at = nullptr;
            llhttp_errno_t err = llhttp_execute(&ll, data + pos, len);
            std::size_t used = 0;
            switch (err) {
            case HPE_OK:
                used = len;
                break;
            case HPE_PAUSED:
                used = static_cast<std::size_t>(llhttp_get_error_pos(&ll) - (data + pos));
                break;
            case HPE_PAUSED_UPGRADE:
                // on_message_complete paused first, so this comes on the
                // next call, with bytes of the other protocol.
                fail(parse_failure::bad_message,
                     "bytes after a protocol upgrade: the connection is no longer HTTP/1.x" + where(data, data + pos));
            default:
                if (failure) {
                    // A callback refused the message: say where.
                    parse_failure k = failure->kind();
                    fail(k, failure->what() + where(data, refused_at ? refused_at : llhttp_get_error_pos(&ll)));
                }
                fail(parse_failure::bad_message,
                     std::string("malformed HTTP message (") + llhttp_errno_name(err) + ": " +
                         (llhttp_get_error_reason(&ll) ? llhttp_get_error_reason(&ll) : "?") + ")" +
                         where(data, llhttp_get_error_pos(&ll)));
            }
            fold.scan(in.substr(pos, used), true);
            pos += used;
            if (counting_head) {
                // The head's size: every byte from the end of the last
                // message up to the end of this head.
                head_bytes += used;
                // RFC 9112 3: a request-target longer than the server
                // parses gets 414, not 431.
                if (head_bytes > lim.max_header_bytes && kind == parser::kind::request && !url_complete)
                    fail(parse_failure::uri_too_long, "request line exceeds the limit of " +
                                                          std::to_string(lim.max_header_bytes) + " bytes");
                if (head_bytes > lim.max_header_bytes)
                    fail(parse_failure::header_too_large, "message head exceeds the limit of " +
                                                              std::to_string(lim.max_header_bytes) + " bytes");
            }
            if (in_trailer_section) {
                // Trailer fields are kept like the head's: the same limit.
                trailer_bytes += used;
                if (trailer_bytes > lim.max_header_bytes)
                    fail(parse_failure::header_too_large, "trailer section exceeds the limit of " +
                                                              std::to_string(lim.max_header_bytes) + " bytes");
            }
            if (err == HPE_OK && fold_at != std::string_view::npos && used == fold_at)
                fail(parse_failure::bad_message,
                     "obs-fold (a field line continued on the next line) is not allowed" + where(data, data + pos));
            if (err == HPE_PAUSED && last_chunk_seen && due == event::need_more) {
                fold.start_section(true);  // on_chunk_header paused just after the LF
                in_trailer_section = true;
                trailer_bytes = 0;
                continue;
            }
            break;
        }
        if (deferred && !deferred_where) {
            deferred.emplace(deferred->kind(), deferred->what() + where(data, refused_at));
            deferred_where = true;
        }
        consumed = pos;
        offset += consumed;
        return deliver(due);
    }

    // A refusal on_body put off until its last piece was handed over.
    void throw_deferred() {
        if (!deferred) return;
        failure = std::move(deferred);
        deferred.reset();
        throw *failure;
    }

    event finish() {
        if (failure) throw *failure;
        throw_deferred();
        if (end_due) {
            end_due = false;
            closed = true;
            return deliver(event::message_end);
        }
        if (closed || upgraded) return event::need_more;
        if (!started) {
            closed = true;
            return event::need_more;
        }
        // Let llhttp take the steps that need no input (after a head that
        // paused it, it has not yet decided how the body is delimited).
        if (llhttp_get_errno(&ll) == HPE_PAUSED) {
            std::size_t consumed = 0;
            event e = run({}, consumed);
            if (e != event::need_more) return e;
        }
        finishing = true;
        due = event::need_more;
        llhttp_errno_t err = llhttp_finish(&ll);
        finishing = false;
        if (err != HPE_OK)
            fail(parse_failure::bad_message, std::string("the connection closed in the middle of a message (") +
                                                 llhttp_errno_name(err) + ")" + " at byte " + std::to_string(offset));
        closed = true;
        if (due == event::message_end) return deliver(event::message_end);
        fail(parse_failure::bad_message, "the connection closed in the middle of a message at byte " +
                                             std::to_string(offset));
    }
};

parser::parser(kind k, limits l) : m_impl(std::make_unique<impl>(k, l)), m_kind(k), m_limits(l) {}
parser::~parser() = default;

parser::impl& parser::state() {
    if (!m_impl) {
        m_impl = std::make_unique<impl>(m_kind, m_limits);
        m_impl->offset = m_offset;
        m_impl->keep_alive = m_keep_alive;
        m_impl->skip_next_body = std::exchange(m_skip_next_body, false);
    }
    return *m_impl;
}

void parser::release() noexcept {
    if (!m_impl) return;
    const impl& s = *m_impl;
    if (s.started || s.in_message || s.upgraded || s.closed || s.failure || s.deferred || s.skip_next_body ||
        s.due != event::need_more || s.end_due) {
        return;
    }
    m_offset = s.offset;
    m_keep_alive = s.keep_alive;
    m_impl.reset();
}

void parser::expect_no_body() noexcept {
    if (m_impl) {
        m_impl->skip_next_body = true;
    } else {
        m_skip_next_body = true;  // for the state the response's first byte makes
    }
}

parser::event parser::parse(std::string_view in, std::size_t& consumed) { return state().run(in, consumed); }

parser::event parser::finish() { return state().finish(); }

const message_head& parser::head() const noexcept {
    HOP_ASSERT(m_impl != nullptr, "a message head asked of a released parser");
    return m_impl->head;
}
message_head& parser::head() noexcept {
    HOP_ASSERT(m_impl != nullptr, "a message head asked of a released parser");
    return m_impl->head;
}
std::string_view parser::body() const noexcept { return m_impl ? m_impl->body : std::string_view(); }
bool parser::keep_alive() const noexcept { return m_impl ? m_impl->keep_alive : m_keep_alive; }
bool parser::in_message() const noexcept { return m_impl && m_impl->in_message; }
bool parser::started() const noexcept { return m_impl && m_impl->started; }

// ---- serialisers ------------------------------------------------------------

namespace {

void write_fields(std::string& out, const headers& fields) {
    for (const auto& f : fields) {
        out += f.name;
        out += ": ";
        out += f.value;
        out += "\r\n";
    }
    out += "\r\n";
}

}  // namespace

void write_request_head(std::string& out, std::string_view method, std::string_view target, const headers& fields) {
    if (method.empty()) throw std::invalid_argument("empty HTTP method");
    if (!is_token(method))
        throw std::invalid_argument("HTTP method \"" + std::string(method) + "\" is not a token");
    if (target.empty()) throw std::invalid_argument("empty request target (use \"/\")");
    for (char c : target) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f)
            throw std::invalid_argument("request target \"" + std::string(target) +
                                        "\" holds a space or a control character");
    }
    out.append(method);
    out += ' ';
    out.append(target);
    out += " HTTP/1.1\r\n";
    write_fields(out, fields);
}

std::string_view http_date() {
    thread_local std::time_t cached = -1;
    thread_local char text[40];
    thread_local std::size_t length = 0;
    const std::time_t now = std::time(nullptr);
    if (now != cached) {
        static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        std::tm tm{};
        ::gmtime_r(&now, &tm);
        const int n = std::snprintf(text, sizeof text, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                                    tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                                    tm.tm_sec);
        length = n > 0 ? static_cast<std::size_t>(n) : 0;
        cached = now;
    }
    return {text, length};
}

void write_response_head(std::string& out, int status, const headers& fields, int version_minor) {
    if (status < 100 || status > 999)
        throw std::invalid_argument("HTTP status " + std::to_string(status) + " is outside 100-999");
    if (version_minor != 0 && version_minor != 1)
        throw std::invalid_argument("HTTP/1." + std::to_string(version_minor) + " is not HTTP/1.0 or HTTP/1.1");
    out += version_minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ";
    out += std::to_string(status);
    out += ' ';
    out.append(reason_phrase(status));
    out += "\r\n";
    write_fields(out, fields);
}

void write_chunk_header(std::string& out, std::size_t size) {
    if (size == 0) throw std::invalid_argument("chunk size 0 would end the body: append last_chunk instead");
    static constexpr char hex[] = "0123456789abcdef";
    char buf[2 * sizeof(std::size_t)];
    char* end = buf + sizeof buf;
    char* p = end;
    for (; size != 0; size >>= 4) *--p = hex[size & 15];
    out.append(p, end);
    out += "\r\n";
}

}  // namespace hop::http::detail
