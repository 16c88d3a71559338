#pragma once
// HOP_ASSERT(cond) or HOP_ASSERT(cond, "what"): checks an invariant of one of
// hop's own state machines in debug and sanitizer builds (whenever NDEBUG is
// not defined; meson's b_ndebug=if-release keeps it in debugoptimized too)
// and costs nothing otherwise. A failed check prints the condition, the
// explanation and the place, then aborts: it is a bug in hop. Bad input to a
// public function never gets here: it throws an exception naming the value.

#ifdef NDEBUG
#define HOP_ASSERT(cond, ...) static_cast<void>(0)
#else
#include <cstdio>
#include <cstdlib>
#define HOP_ASSERT(cond, ...)                                                                                   \
    ((cond) ? static_cast<void>(0)                                                                             \
            : (std::fprintf(stderr, "%s:%d: hop internal invariant failed: %s (%s)\n", __FILE__, __LINE__, #cond, \
                            "" __VA_ARGS__),                                                                   \
               std::abort()))
#endif
