#pragma once
// HOP_ASSERT(cond): checks an internal invariant in debug and sanitizer
// builds (whenever NDEBUG is not defined) and costs nothing otherwise. For
// hop's own state machines, never for user input: bad input to a public
// function throws an exception naming the bad value instead.

#ifdef NDEBUG
#define HOP_ASSERT(cond) static_cast<void>(0)
#else
#include <cstdio>
#include <cstdlib>
#define HOP_ASSERT(cond)                                                                                      \
    ((cond) ? static_cast<void>(0)                                                                            \
            : (std::fprintf(stderr, "%s:%d: hop internal invariant failed: %s\n", __FILE__, __LINE__, #cond), \
               std::abort()))
#endif
