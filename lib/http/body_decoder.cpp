// Content-Encoding decoders for the client (body_decoder.hpp): gzip and
// deflate (zlib, in gzip.cpp), br (libbrotlidec) and zstd (libzstd).

#include "body_decoder.hpp"

#include "codec.hpp"

#include <brotli/decode.h>
#include <zstd.h>

#include <cstdint>
#include <stdexcept>

namespace hop::http::detail {

namespace {

constexpr std::size_t piece = 16 * 1024;  // decoded bytes per step

// Appends `produced` bytes of `buf` to `out`, or fills `out` to `max_out`
// and throws if that would pass it.
void append_bounded(std::string& out, const char* buf, std::size_t produced, std::size_t max_out, const char* name) {
    if (produced > max_out || out.size() > max_out - produced) {
        out.append(buf, max_out > out.size() ? max_out - out.size() : 0);
        throw protocol_error(std::string("decompressed ") + name + " body exceeds the limit of " +
                             std::to_string(max_out) + " bytes");
    }
    out.append(buf, produced);
}

class zlib_decoder final : public body_decoder {
public:
    explicit zlib_decoder(decompressor::format f) : m_zlib(f) {}
    void feed(std::string_view in, std::string& out, std::size_t max_out) override { m_zlib.feed(in, out, max_out); }
    void finish() override { m_zlib.finish(); }

private:
    decompressor m_zlib;
};

// States: running (BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT after each feed)
// until the stream's last block (SUCCESS: done), after which nothing may come.
class brotli_decoder final : public body_decoder {
public:
    brotli_decoder() : m_state(BrotliDecoderCreateInstance(nullptr, nullptr, nullptr)) {
        if (!m_state) throw std::bad_alloc();
    }
    ~brotli_decoder() override { BrotliDecoderDestroyInstance(m_state); }
    brotli_decoder(const brotli_decoder&) = delete;
    brotli_decoder& operator=(const brotli_decoder&) = delete;

    void feed(std::string_view in, std::string& out, std::size_t max_out) override {
        if (in.empty()) return;
        if (m_done) throw protocol_error("bad br body: data after the end of the compressed stream");
        m_started = true;
        std::size_t avail_in = in.size();
        const auto* next_in = reinterpret_cast<const std::uint8_t*>(in.data());
        char buf[piece];
        for (;;) {
            std::size_t avail_out = sizeof buf;
            auto* next_out = reinterpret_cast<std::uint8_t*>(buf);
            const BrotliDecoderResult r =
                BrotliDecoderDecompressStream(m_state, &avail_in, &next_in, &avail_out, &next_out, nullptr);
            append_bounded(out, buf, sizeof buf - avail_out, max_out, "br");
            switch (r) {
                case BROTLI_DECODER_RESULT_SUCCESS:
                    m_done = true;
                    if (avail_in > 0) throw protocol_error("bad br body: data after the end of the compressed stream");
                    return;
                case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
                    return;
                case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
                    continue;
                case BROTLI_DECODER_RESULT_ERROR:
                    break;
            }
            throw protocol_error(std::string("bad br body: ") +
                                 BrotliDecoderErrorString(BrotliDecoderGetErrorCode(m_state)));
        }
    }
    // An empty body decodes to nothing, as for gzip.
    void finish() override {
        if (m_started && !m_done) throw protocol_error("bad br body: the compressed stream is truncated");
    }

private:
    BrotliDecoderState* m_state;
    bool m_started = false;
    bool m_done = false;
};

// A zstd body may hold several frames one after another (RFC 8878 3.1);
// it ends cleanly only between frames (ZSTD_decompressStream returned 0).
class zstd_decoder final : public body_decoder {
public:
    zstd_decoder() : m_ctx(ZSTD_createDCtx()) {
        if (!m_ctx) throw std::bad_alloc();
        // RFC 9659: an HTTP decoder need not take windows over 8 MiB, and
        // this bounds the memory a server can make the client allocate.
        ZSTD_DCtx_setParameter(m_ctx, ZSTD_d_windowLogMax, 23);
    }
    ~zstd_decoder() override { ZSTD_freeDCtx(m_ctx); }
    zstd_decoder(const zstd_decoder&) = delete;
    zstd_decoder& operator=(const zstd_decoder&) = delete;

    void feed(std::string_view in, std::string& out, std::size_t max_out) override {
        if (in.empty()) return;
        ZSTD_inBuffer input{in.data(), in.size(), 0};
        char buf[piece];
        for (;;) {
            ZSTD_outBuffer output{buf, sizeof buf, 0};
            const std::size_t r = ZSTD_decompressStream(m_ctx, &output, &input);
            if (ZSTD_isError(r)) throw protocol_error(std::string("bad zstd body: ") + ZSTD_getErrorName(r));
            append_bounded(out, buf, output.pos, max_out, "zstd");
            m_between_frames = r == 0;
            // All input taken: done once a call gives nothing more (with
            // room left, libzstd may still stop between blocks: ask again).
            if (input.pos == input.size && (r == 0 || output.pos == 0)) return;
        }
    }
    void finish() override {
        if (!m_between_frames) throw protocol_error("bad zstd body: the compressed stream is truncated");
    }

private:
    ZSTD_DCtx* m_ctx;
    bool m_between_frames = true;
};

bool equals_lower(std::string_view a, std::string_view lower) {
    if (a.size() != lower.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != lower[i]) return false;
    }
    return true;
}

}  // namespace

std::unique_ptr<body_decoder> body_decoder::for_encoding(std::string_view ce) {
    while (!ce.empty() && (ce.front() == ' ' || ce.front() == '\t')) ce.remove_prefix(1);
    while (!ce.empty() && (ce.back() == ' ' || ce.back() == '\t')) ce.remove_suffix(1);
    if (auto f = decompressor::for_encoding(ce)) return std::make_unique<zlib_decoder>(*f);
    if (equals_lower(ce, "br")) return std::make_unique<brotli_decoder>();
    if (equals_lower(ce, "zstd")) return std::make_unique<zstd_decoder>();
    return nullptr;
}

}  // namespace hop::http::detail
