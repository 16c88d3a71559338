#pragma once
// Lifetime counting: proves every object (frame argument, callback, value)
// is destroyed exactly once, also on cancellation and shutdown.

#include <atomic>

namespace hop_test {

struct counters {
    std::atomic<int> constructed{0};
    std::atomic<int> destroyed{0};
    int alive() const { return constructed.load() - destroyed.load(); }
};

/// Counts its constructions (copies and moves included) and destructions in
/// the counters it points to.
class counted {
public:
    explicit counted(counters& c) : m_c(&c) { ++m_c->constructed; }
    counted(const counted& o) : m_c(o.m_c) { ++m_c->constructed; }
    counted(counted&& o) noexcept : m_c(o.m_c) { ++m_c->constructed; }
    counted& operator=(const counted&) = default;
    counted& operator=(counted&&) noexcept = default;
    ~counted() { ++m_c->destroyed; }

private:
    counters* m_c;
};

}  // namespace hop_test
