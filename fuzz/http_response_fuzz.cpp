// The client's response path: parser(kind::response) fed the input split at
// a point the fuzzer picks, chunked bodies de-chunked, and a body with
// Content-Encoding gzip / deflate run through the decompressor (bounded),
// until need_more, a parse_error or the end (finish(), as when the server
// closes).
//
// Input: byte 0 picks the split point, byte 1 the options (1: the first
// response answers HEAD, 2: the peer closes at the end, 4: small limits),
// the rest is the bytes from the peer.
#include "wire.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace {

using hop::http::protocol_error;
using hop::http::detail::decompressor;
using hop::http::detail::parse_error;
using hop::http::detail::parser;

struct outcome {
    std::size_t messages = 0;
    std::string decoded;  // every decoded body, one after the other
    std::string bodies;   // every raw body
    std::string error;
};

constexpr std::size_t max_decoded = 64 * 1024;

outcome parse_responses(std::initializer_list<std::string_view> parts, std::uint8_t options) {
    outcome out;
    parser::limits limits;
    if (options & 4) limits = {.max_header_bytes = 256, .max_body_bytes = 4096};
    parser p(parser::kind::response, limits);
    if (options & 1) p.expect_no_body();
    std::optional<decompressor> inflater;
    bool inflate_failed = false;
    try {
        hop_fuzz::drive(
            p, parts, (options & 2) != 0,
            [&](parser::event e, parser& q) {
                switch (e) {
                case parser::event::head: {
                    const auto& h = q.head();
                    HOP_FUZZ_EXPECT(h.status >= 100 && h.status <= 999);
                    HOP_FUZZ_EXPECT(h.version_major == 1);
                    inflater.reset();
                    inflate_failed = false;
                    if (auto ce = h.headers.get("Content-Encoding"))
                        if (auto f = decompressor::for_encoding(*ce)) inflater.emplace(*f);
                    break;
                }
                case parser::event::body: {
                    int s = q.head().status;
                    HOP_FUZZ_EXPECT(s >= 200 && s != 204 && s != 304);
                    out.bodies.append(q.body());
                    if (inflater && !inflate_failed) {
                        try {
                            inflater->feed(q.body(), out.decoded, max_decoded);
                        } catch (const parse_error&) {
                            HOP_FUZZ_EXPECT(!"the decompressor threw a parse_error");
                        } catch (const protocol_error&) {
                            inflate_failed = true;
                        }
                        HOP_FUZZ_EXPECT(out.decoded.size() <= max_decoded);
                    }
                    break;
                }
                case parser::event::message_end:
                    ++out.messages;
                    if (inflater && !inflate_failed) {
                        try {
                            inflater->finish();
                        } catch (const protocol_error&) {
                        }
                    }
                    break;
                case parser::event::need_more:
                    break;
                }
            },
            limits.max_body_bytes);
    } catch (const parse_error& e) {
        HOP_FUZZ_EXPECT(e.status() == 400 || e.status() == 413 || e.status() == 431);
        out.error = e.what();
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    std::string_view all(reinterpret_cast<const char*>(data) + 2, size - 2);
    std::size_t split = all.size() * data[0] / 256;
    std::uint8_t options = data[1];

    auto whole = parse_responses({all}, options);
    auto split_up = parse_responses({all.substr(0, split), all.substr(split)}, options);
    // Where the input is cut must not change what is parsed, nor which
    // error is reported where.
    HOP_FUZZ_EXPECT(whole.messages == split_up.messages);
    HOP_FUZZ_EXPECT(whole.bodies == split_up.bodies);
    HOP_FUZZ_EXPECT(whole.decoded == split_up.decoded);
    HOP_FUZZ_EXPECT(whole.error == split_up.error);
    return 0;
}
