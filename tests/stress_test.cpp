#include <hop/hop.hpp>

#include <doctest/doctest.h>

TEST_SUITE("stress") {
TEST_CASE("placeholder") { CHECK(true); }
}
