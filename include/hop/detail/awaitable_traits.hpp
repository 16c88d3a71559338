#pragma once
// What `co_await x` yields, for generic drivers (sync_wait, when_all, ...).

#include <coroutine>
#include <type_traits>
#include <utility>

namespace hop::detail {

template <class A>
concept has_member_co_await = requires(A&& a) { std::forward<A>(a).operator co_await(); };
template <class A>
concept has_free_co_await = requires(A&& a) { operator co_await(std::forward<A>(a)); };

template <class A>
decltype(auto) get_awaiter(A&& a) {
    if constexpr (has_member_co_await<A>) {
        return std::forward<A>(a).operator co_await();
    } else if constexpr (has_free_co_await<A>) {
        return operator co_await(std::forward<A>(a));
    } else {
        return std::forward<A>(a);
    }
}

template <class A>
using awaiter_t = decltype(get_awaiter(std::declval<A>()));

template <class A>
using await_result_t = decltype(std::declval<awaiter_t<A>&>().await_resume());

}  // namespace hop::detail
