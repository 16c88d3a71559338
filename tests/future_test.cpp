#include <hop/future.hpp>

#include <doctest/doctest.h>

TEST_SUITE("future") {
TEST_CASE("header compiles on its own") { CHECK(true); }
}
