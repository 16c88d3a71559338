#include <hop/task_group.hpp>

#include <doctest/doctest.h>

TEST_SUITE("task_group") {
TEST_CASE("header compiles on its own") { CHECK(true); }
}
