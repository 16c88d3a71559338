#include <hop/net.hpp>

#include <doctest/doctest.h>
