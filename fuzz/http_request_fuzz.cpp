// The server's request path: parser(kind::request) fed the input split at a
// point the fuzzer picks, every event taken until need_more or a
// parse_error. Each request it accepts is written out again with
// write_request_head (and its body re-framed) and must parse back to the
// same method, target, fields and body.
//
// Input: byte 0 picks the split point, byte 1 the options, the rest is the
// bytes from the peer.
#include "wire.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace {

using hop::http::detail::parse_error;
using hop::http::detail::parser;

struct request_seen {
    std::string method;
    std::string target;
    hop::http::headers fields;
    bool chunked = false;
    std::string body;
    bool complete = false;
};

struct outcome {
    std::vector<request_seen> requests;
    int error_status = 0;  // 0: no parse_error
    std::string error;
};

outcome parse_requests(std::initializer_list<std::string_view> parts, parser::limits limits,
                                         bool at_eof) {
    outcome out;
    auto& seen = out.requests;
    parser p(parser::kind::request, limits);
    try {
        hop_fuzz::drive(
            p, parts, at_eof,
            [&](parser::event e, parser& q) {
                if (e == parser::event::head) {
                    const auto& h = q.head();
                    HOP_FUZZ_EXPECT(!h.method.empty());
                    HOP_FUZZ_EXPECT(!h.target.empty());
                    HOP_FUZZ_EXPECT(h.version_major == 1);
                    HOP_FUZZ_EXPECT(!(h.chunked && h.content_length));
                    seen.push_back({h.method, h.target, h.headers, h.chunked, {}, false});
                } else if (e == parser::event::body) {
                    seen.back().body.append(q.body());
                } else if (e == parser::event::message_end) {
                    seen.back().complete = true;
                }
            },
            limits.max_body_bytes);
    } catch (const parse_error& e) {
        out.error_status = e.status();
        out.error = e.what();
        // 414: a request line over max_header_bytes; 505: a version other than 1.x.
        HOP_FUZZ_EXPECT(out.error_status == 400 || out.error_status == 413 || out.error_status == 414 ||
                        out.error_status == 431 || out.error_status == 505);
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    std::string_view all(reinterpret_cast<const char*>(data) + 2, size - 2);
    std::size_t split = all.size() * data[0] / 256;
    std::uint8_t options = data[1];
    parser::limits limits;
    if (options & 1) limits = {.max_header_bytes = 256, .max_body_bytes = 64};
    bool at_eof = (options & 2) != 0;

    auto whole = parse_requests({all}, limits, at_eof);
    auto split_up = parse_requests({all.substr(0, split), all.substr(split)}, limits, at_eof);
    // Where the input is cut must not change what is parsed, nor which
    // error is reported where.
    HOP_FUZZ_EXPECT(whole.requests.size() == split_up.requests.size());
    HOP_FUZZ_EXPECT(whole.error_status == split_up.error_status);
    HOP_FUZZ_EXPECT(whole.error == split_up.error);
    for (std::size_t i = 0; i < whole.requests.size(); ++i) {
        const auto& a = whole.requests[i];
        const auto& b = split_up.requests[i];
        HOP_FUZZ_EXPECT(a.method == b.method);
        HOP_FUZZ_EXPECT(a.target == b.target);
        HOP_FUZZ_EXPECT(a.fields.size() == b.fields.size());
        HOP_FUZZ_EXPECT(a.complete == b.complete);
        if (a.complete) HOP_FUZZ_EXPECT(a.body == b.body);
    }

    // Round trip: each complete request, written out again, parses back the same.
    for (const auto& r : whole.requests) {
        if (!r.complete) continue;
        std::string out;
        hop::http::detail::write_request_head(out, r.method, r.target, r.fields);
        if (r.method == "CONNECT") {
            // What follows the head is the tunnel, whatever the framing
            // fields said (an Upgrade with a body still has its body).
        } else if (r.chunked) {
            if (!r.body.empty()) {
                hop::http::detail::write_chunk_header(out, r.body.size());
                out += r.body;
                out += "\r\n";
            }
            out += hop::http::detail::last_chunk;
        } else {
            out += r.body;
        }
        auto again = parse_requests({out}, {}, false);
        HOP_FUZZ_EXPECT(again.error_status == 0);
        HOP_FUZZ_EXPECT(again.requests.size() == 1);
        const auto& back = again.requests[0];
        HOP_FUZZ_EXPECT(back.complete);
        HOP_FUZZ_EXPECT(back.method == r.method);
        HOP_FUZZ_EXPECT(back.target == r.target);
        HOP_FUZZ_EXPECT(back.body == r.body);
        HOP_FUZZ_EXPECT(back.fields.size() == r.fields.size());
        auto f2 = back.fields.begin();
        for (const auto& f : r.fields) {
            HOP_FUZZ_EXPECT(f2->name == f.name);
            HOP_FUZZ_EXPECT(f2->value == f.value);
            ++f2;
        }
    }
    return 0;
}
