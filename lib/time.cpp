#include "loop_core.hpp"

#include <hop/time.hpp>

#include <string>

namespace hop::detail {

void timer_arm(io_loop& loop, timer_node* t) { loop.core().add_timer(t); }

void timer_disarm(io_loop& loop, timer_node* t) noexcept { loop.core().remove_timer(t); }

bool loop_closing(io_loop& loop) noexcept { return loop.core().closing(); }

void throw_negative_duration(const char* where, long long ns) {
    throw std::invalid_argument(std::string(where) + ": negative duration " + std::to_string(ns) + "ns");
}

}  // namespace hop::detail
