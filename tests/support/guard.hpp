#pragma once
// Failure guards. A guard turns a hang (a lost wakeup, a peer that never
// answers) into a failed check; it never synchronises and never measures.
// So it must not fire on a run that is only slow: each guard's base is sized
// for the plain optimised build on a loaded 2-core machine, and scaled() below
// stretches it for the sanitizer builds, which run the same work several times
// slower (CI runs two test binaries at once, so each gets about one core).

#include <chrono>

#if defined(__SANITIZE_THREAD__)
#define HOP_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOP_TEST_TSAN 1
#endif
#endif
#ifndef HOP_TEST_TSAN
#define HOP_TEST_TSAN 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define HOP_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HOP_TEST_ASAN 1
#endif
#endif
#ifndef HOP_TEST_ASAN
#define HOP_TEST_ASAN 0
#endif

namespace hop_test {

inline constexpr bool under_tsan = HOP_TEST_TSAN != 0;
inline constexpr bool under_asan = HOP_TEST_ASAN != 0;
inline constexpr bool under_sanitizer = under_tsan || under_asan;

/// How many times a guard's base is stretched in this build. Measured in
/// 2026-12 on the socket suite, the slowest: TSan ran it 4-6x slower than
/// the plain build, ASan+UBSan at -O0 3-4x; the factors leave room above that.
inline constexpr int guard_scale = under_tsan ? 8 : under_asan ? 5 : 1;

/// `base` (the guard for the plain build) stretched for this build.
template <class Rep, class Period>
constexpr auto scaled(std::chrono::duration<Rep, Period> base) {
    return base * guard_scale;
}

}  // namespace hop_test
