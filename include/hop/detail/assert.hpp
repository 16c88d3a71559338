#pragma once
// HOP_ASSERT(cond, what): checks an invariant of one of hop's state machines
// in debug and sanitizer builds (NDEBUG not defined); compiled out in
// release builds. A failed check prints the condition, `what` and the place,
// then aborts: it is a bug in hop, never a user error (those throw).

#ifdef NDEBUG
#define HOP_ASSERT(cond, what) ((void)0)
#else
#include <cstdio>
#include <cstdlib>
#define HOP_ASSERT(cond, what)                                                                                   \
    ((cond) ? (void)0                                                                                           \
            : (std::fprintf(stderr, "hop: internal invariant broken at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                            #cond, what),                                                                       \
               std::abort()))
#endif
