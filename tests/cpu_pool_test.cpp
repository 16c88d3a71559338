#include <hop/cpu_pool.hpp>

#include <doctest/doctest.h>

TEST_SUITE("cpu_pool") {
TEST_CASE("header compiles on its own") { CHECK(true); }
}
