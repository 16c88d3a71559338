#include <hop/combinators.hpp>

#include <doctest/doctest.h>

TEST_SUITE("combinators") {
TEST_CASE("header compiles on its own") { CHECK(true); }
}
