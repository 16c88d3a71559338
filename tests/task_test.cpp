#include <hop/task.hpp>

#include <doctest/doctest.h>

TEST_SUITE("task") {
TEST_CASE("header compiles on its own") { CHECK(true); }
}
