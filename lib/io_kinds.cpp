// The kinds of IO operation: each backend's half put together (io_kinds.hpp).

#include "io_kinds.hpp"

#ifdef HOP_HAVE_URING
#define HOP_URING_PREP(fn) &uring_ops::fn
#else
#define HOP_URING_PREP(fn) nullptr
#endif

namespace hop::detail {

using w = readiness_wait;
constexpr auto stream = readiness_fd::stream_socket;
constexpr auto datagram = readiness_fd::datagram_socket;

const io_kind io_kind_poll{"wait", HOP_URING_PREP(prep_poll), {&readiness_ops::attempt_poll, w::by_events}, 0};
const io_kind io_kind_recv{"recv", HOP_URING_PREP(prep_recv), {&readiness_ops::attempt_recv, w::receive, stream}, 1};
const io_kind io_kind_send{"send", HOP_URING_PREP(prep_send), {&readiness_ops::attempt_send, w::send, stream}, 2};
const io_kind io_kind_accept{"accept", HOP_URING_PREP(prep_accept), {&readiness_ops::attempt_accept, w::readable, stream}, 3};
const io_kind io_kind_connect{"connect", HOP_URING_PREP(prep_connect), {&readiness_ops::attempt_connect, w::writable, stream}, 4};
const io_kind io_kind_recvmsg{"recvmsg", HOP_URING_PREP(prep_recvmsg), {&readiness_ops::attempt_recvmsg, w::readable, datagram}, 5};
const io_kind io_kind_sendmsg{"sendmsg", HOP_URING_PREP(prep_sendmsg), {&readiness_ops::attempt_sendmsg, w::writable, datagram}, 6};
const io_kind io_kind_send_gathered{"sendmsg", HOP_URING_PREP(prep_send_gathered), {&readiness_ops::attempt_send_gathered, w::writable, stream}, 7};
const io_kind io_kind_read_at{"read", HOP_URING_PREP(prep_read_at), {&readiness_ops::call_read_at, w::blocking_pool}, 8};
const io_kind io_kind_write_at{"write", HOP_URING_PREP(prep_write_at), {&readiness_ops::call_write_at, w::blocking_pool}, 9};
const io_kind io_kind_fsync{"fsync", HOP_URING_PREP(prep_fsync), {&readiness_ops::call_fsync, w::blocking_pool}, 10};

}  // namespace hop::detail
