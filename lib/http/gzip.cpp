// Content-Encoding gzip / deflate through zlib's inflate.
#include "codec.hpp"

#include <zlib.h>

#include <algorithm>
#include <stdexcept>

namespace hop::http::detail {

std::optional<decompressor::format> decompressor::for_encoding(std::string_view content_encoding) noexcept {
    // Surrounding whitespace is not part of the value (RFC 9110 5.5).
    while (!content_encoding.empty() && (content_encoding.front() == ' ' || content_encoding.front() == '\t'))
        content_encoding.remove_prefix(1);
    while (!content_encoding.empty() && (content_encoding.back() == ' ' || content_encoding.back() == '\t'))
        content_encoding.remove_suffix(1);
    if (iequals(content_encoding, "gzip") || iequals(content_encoding, "x-gzip")) return format::gzip;
    if (iequals(content_encoding, "deflate")) return format::deflate;
    return std::nullopt;
}

// States: `started` false until the first bytes decide (for deflate)
// between a zlib header and raw deflate; `done` once inflate reports
// Z_STREAM_END, after which nothing may follow.
struct decompressor::impl {
    z_stream zs{};
    format fmt;
    bool initialised = false;
    bool started = false;
    bool done = false;
    std::string first;  // deflate: a lone first byte, until the second decides

    explicit impl(format f) : fmt(f) {}
    ~impl() {
        if (initialised) inflateEnd(&zs);
    }

    void init(int window_bits) {
        int rc = inflateInit2(&zs, window_bits);
        if (rc != Z_OK)
            throw std::runtime_error(std::string("zlib inflateInit2 failed: ") + (zs.msg ? zs.msg : zError(rc)));
        initialised = true;
    }

    std::string name() const { return fmt == format::gzip ? "gzip" : "deflate"; }

    [[noreturn]] void bad(const char* why) const {
        throw protocol_error("bad " + name() + " body: " + why);
    }

    void feed(std::string_view in, std::string& out, std::size_t max_out) {
        if (in.empty()) return;
        if (!started) {
            if (fmt == format::gzip) {
                init(16 + MAX_WBITS);
            } else {
                // "deflate" means zlib-wrapped (RFC 9110 8.4.1.2), but some
                // servers send raw deflate; browsers accept both. A zlib
                // header is CMF (method 8, window <= 32K) and FLG with
                // CMF*256+FLG divisible by 31: it takes two bytes to tell.
                if (first.size() + in.size() < 2) {
                    first.append(in);
                    return;
                }
                std::string two = first + std::string(in.substr(0, 2 - first.size()));
                auto cmf = static_cast<unsigned char>(two[0]);
                auto flg = static_cast<unsigned char>(two[1]);
                bool zlib_header = (cmf & 0x0f) == 8 && (cmf >> 4) <= 7 && (cmf * 256 + flg) % 31 == 0;
                init(zlib_header ? MAX_WBITS : -MAX_WBITS);
            }
            started = true;
            if (!first.empty()) {
                std::string held = std::move(first);
                first.clear();
                inflate_some(held, out, max_out);
            }
        }
        inflate_some(in, out, max_out);
    }

    void inflate_some(std::string_view in, std::string& out, std::size_t max_out) {
        if (in.empty()) return;
        if (done) bad("data after the end of the compressed stream");

        zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
        zs.avail_in = 0;
        std::size_t left = in.size();
        char buf[16 * 1024];
        for (;;) {
            if (zs.avail_in == 0 && left > 0) {
                // avail_in is a uInt: feed huge inputs in slices.
                auto take = static_cast<uInt>(std::min<std::size_t>(left, 1u << 30));
                zs.avail_in = take;
                left -= take;
            }
            zs.next_out = reinterpret_cast<Bytef*>(buf);
            zs.avail_out = sizeof buf;
            int rc = inflate(&zs, Z_NO_FLUSH);
            std::size_t produced = sizeof buf - zs.avail_out;
            if (produced > max_out || out.size() > max_out - produced) {
                // Up to the limit exactly, however the input was cut.
                out.append(buf, max_out > out.size() ? max_out - out.size() : 0);
                throw protocol_error("decompressed " + name() + " body exceeds the limit of " +
                                     std::to_string(max_out) + " bytes");
            }
            out.append(buf, produced);
            if (rc == Z_STREAM_END) {
                done = true;
                if (zs.avail_in > 0 || left > 0) bad("data after the end of the compressed stream");
                return;
            }
            if (rc != Z_OK && rc != Z_BUF_ERROR) bad(zs.msg ? zs.msg : zError(rc));
            // Everything taken and everything pending written out: wait for more.
            if (zs.avail_in == 0 && left == 0 && zs.avail_out != 0) return;
        }
    }

    // An empty body never started a stream: it decodes to nothing (servers
    // send "Content-Encoding: gzip" with "Content-Length: 0").
    void finish() const {
        if ((started && !done) || !first.empty()) bad("the compressed stream is truncated");
    }
};

decompressor::decompressor(format f) : m_impl(std::make_unique<impl>(f)) {}
decompressor::~decompressor() = default;

void decompressor::feed(std::string_view in, std::string& out, std::size_t max_out) { m_impl->feed(in, out, max_out); }

void decompressor::finish() { m_impl->finish(); }

}  // namespace hop::http::detail
