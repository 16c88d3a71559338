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

/// Test seam (tests/mpi_fault_test.cpp): OpenMPI 4.1 cannot be made to
/// return an error for one rank on demand, so this arms a simulated one.
/// The next call of `kind` in this process that concerns a message to
/// `rank` reports `code` (an MPI error class, e.g. MPI_ERR_OTHER) as if MPI
/// had returned it: `isend` instead of calling MPI_Isend, `test` instead of
/// what MPI_Test says of a send. One-shot; thread-safe.
enum class fault_kind { isend, test };
void inject_fault(fault_kind kind, int rank, int code) noexcept;

}  // namespace hop::mpi::detail
