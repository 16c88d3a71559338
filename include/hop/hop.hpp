#pragma once
/// @file
/// Everything hop offers, in one include.

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/file.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>
#include <hop/io_loop.hpp>
#include <hop/io_pool.hpp>
#include <hop/metrics.hpp>
#include <hop/net.hpp>
#include <hop/sync.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>
#include <hop/version.hpp>
