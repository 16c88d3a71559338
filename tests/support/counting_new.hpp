#pragma once
// Replaces the global operator new / delete with versions that count every
// allocation: per thread (how many) and process-wide (how many bytes). For
// tests that prove an operation allocates nothing, or that a stalled write
// is not buffered in user memory.
//
// Include from exactly one source file of a test binary: the replacements
// are definitions. They pair operator new with malloc and delete with free,
// which GCC cannot tell from a real mismatch once they are inlined.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace hop_test {
/// Allocations made by the calling thread.
inline thread_local std::size_t allocations_on_this_thread = 0;
/// Bytes allocated by every thread.
inline std::atomic<std::uint64_t> allocated_bytes{0};
/// Allocations made by every thread.
inline std::atomic<std::uint64_t> allocations_total{0};
/// Non-null pointers freed by every thread (allocations_total minus this is
/// what is live, counting what was allocated before the counting began).
inline std::atomic<std::uint64_t> frees_total{0};
}  // namespace hop_test

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
void* counted_alloc(std::size_t n, std::size_t align) {
    ++hop_test::allocations_on_this_thread;
    hop_test::allocations_total.fetch_add(1, std::memory_order_relaxed);
    hop_test::allocated_bytes.fetch_add(n, std::memory_order_relaxed);
    n = n == 0 ? 1 : n;
    void* p = align <= alignof(std::max_align_t) ? std::malloc(n)
                                                 : std::aligned_alloc(align, (n + align - 1) / align * align);
    if (!p) throw std::bad_alloc();
    return p;
}
void counted_free(void* p) noexcept {
    if (p) hop_test::frees_total.fetch_add(1, std::memory_order_relaxed);
    std::free(p);
}
}  // namespace
void* operator new(std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return counted_alloc(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return counted_alloc(n, alignof(std::max_align_t));
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return counted_alloc(n, static_cast<std::size_t>(a));
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
    return operator new(n, a, t);
}
void operator delete(void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { counted_free(p); }
void operator delete(void* p) noexcept { counted_free(p); }
void operator delete[](void* p) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t) noexcept { counted_free(p); }
void operator delete(void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { counted_free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { counted_free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
