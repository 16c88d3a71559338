#pragma once
// Private to libhop-mpi: the message tags and the records they carry.
//
// rank 0 -> worker, tag_jobs:    records {u64 id, string name, string signature, u8 each, string args}...
// worker -> rank 0, tag_results: records {u64 id, u8 failed, string payload}...
//                                (payload: the serialized result, or the error message)
// rank 0 -> worker, tag_stop:    empty; sent once every job has answered.
// At start-up every worker's pool size reaches rank 0 through MPI_Gather.

#include <hop/mpi.hpp>

#include <string_view>

namespace hop::mpi::detail {

inline constexpr int tag_jobs = 1;
inline constexpr int tag_results = 2;
inline constexpr int tag_stop = 3;

/// The registered function called `name`, or null.
const function_entry* find_function(std::string_view name);

}  // namespace hop::mpi::detail
