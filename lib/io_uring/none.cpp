// Built when hop is configured without io_uring: the automatic backend is
// then always epoll, and asking for io_uring explicitly fails clearly.
#include "../loop_core.hpp"

#include <cerrno>
#include <system_error>

namespace hop::detail {

std::unique_ptr<loop_backend> make_uring_backend(loop_core&, unsigned) {
    throw std::system_error(ENOSYS, std::generic_category(), "hop::io_loop: built without io_uring support");
}

bool uring_compiled_in() noexcept { return false; }

}  // namespace hop::detail
