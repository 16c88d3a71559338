#pragma once
// Private to hop: a task started by hop::spawn(pool, t) or task_group::spawn.
//
// One object from the frame cache holds the child's future state, the queue
// item that starts it, the sink its final_suspend reports to, and its stop
// source, made only if something asks for a token (lazy_stop_source). No
// driver coroutine: the child itself runs, and at its end its result moves
// from its frame into the future state.
//
// Started from a worker of the pool it runs on, the child is pushed on that
// worker's deque and the future remembers the item: a parent that awaits the
// future (or waits on the group) on the same worker takes the child back if
// nobody stole it and runs it inline, as oneTBB's task_group::wait does; the
// parent then never suspends. Anything else (a steal, an await from another
// thread, a copy of the future awaited elsewhere) goes through the ordinary
// future protocol.

#include <hop/detail/executor.hpp>
#include <hop/detail/stop.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <coroutine>
#include <exception>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace hop::detail {

class group_state;
/// A spawned child of group `g` ended (`e`: its exception, null on success):
/// tells the group, then drops the child's reference to it.
void group_child_done(group_state* g, std::exception_ptr e) noexcept;

/// The type-erased queue item of a spawned child. Its `run` is always
/// run_spawned (so a worker can tell a spawned child on its deque from other
/// work), which calls `start`.
struct spawn_item : work_item {
    void (*start)(spawn_item*) noexcept = nullptr;
};

/// The `run` of every spawn_item.
void run_spawned(work_item* w) noexcept;

/// On a pool worker: runs the spawned children on top of its deque (newest
/// first) while `pending(arg)`; returns !pending(arg). Never blocks.
bool help_while(bool (*pending)(const void*), const void* arg) noexcept;

/// Pushes `w` on the calling worker's deque if the calling thread is a worker
/// of `ex` running its work (true), else does nothing (false).
/// @throws std::bad_alloc if the deque must grow and cannot.
bool fork_push_if_worker_of(executor_base& ex, work_item* w);

template <class T>
class spawned final : public future_state<T>,
                      public spawn_item,
                      public task_promise_base::completion_sink,
                      public frame_allocated {
public:
    using handle_type = std::coroutine_handle<task_promise<T>>;

    /// Takes over `child` (not started). `group`: the task_group it belongs
    /// to (the caller gave it a reference for this child), or null.
    spawned(handle_type child, group_state* group, lazy_stop_source* parent_stop) noexcept
        : future_state<T>(&spawned::destroy, 2), m_child(child), m_group(group) {
        spawn_item::run = &run_spawned;
        spawn_item::start = &spawned::start_child;
        spawn_item::discard = &spawned::discard_child;
        completion_sink::ended = &spawned::on_end;
        if (parent_stop != nullptr) {
            m_stop.set_parent_source(parent_stop);
        } else {
            m_stop.set_parent(nullptr);
        }
        this->set_lazy_stop(&m_stop, parent_stop == nullptr);
        (void)child.promise().prepare_detached(child, *this, &m_stop);
    }

    spawn_item* item() noexcept { return this; }

    /// Runs the child on the calling thread now (no executor to queue on).
    void start_here() noexcept { start_child(this); }

    /// The child never ran (its queue refused it): frees it without
    /// completing the future, which the caller then drops.
    void abandon() noexcept {
        m_child.destroy();
        if (m_group != nullptr) group_child_done(m_group, nullptr);
        this->release();
    }

private:
    static void destroy(future_state_base* s) noexcept {
        delete static_cast<spawned*>(static_cast<future_state<T>*>(s));
    }

    static void start_child(spawn_item* it) noexcept {
        auto* self = static_cast<spawned*>(it);
        if (!self->try_start()) {  // cancelled before it ran
            self->end_unstarted();
            return;
        }
        self->m_child.resume();  // until its end (on_end) or its first suspension
    }

    static void discard_child(work_item* w) noexcept {
        auto* self = static_cast<spawned*>(static_cast<spawn_item*>(w));
        self->cancel();
        self->end_unstarted();
    }

    void end_unstarted() noexcept {
        m_child.destroy();
        group_state* g = m_group;
        this->release();
        if (g != nullptr) group_child_done(g, nullptr);
    }

    // The child's final_suspend: the result moves into the future state,
    // then the frame (and the arguments it owns) is freed, and only then is
    // the result published: once a waiter can see it, this thread holds no
    // reference to it (see drive_into).
    static void on_end(completion_sink& s, bool failed) noexcept {
        auto* self = static_cast<spawned*>(&s);
        auto& p = self->m_child.promise();
        std::exception_ptr e;
        try {
            // Only this producer completes a running state (cancel() on a
            // running one requests stop), so the slot may be written first.
            if constexpr (std::is_void_v<T>) {
                p.take_result();
            } else if (!failed) {
                self->emplace_value(p.take_result());
            } else {
                (void)p.take_result();
            }
        } catch (...) {
            e = std::current_exception();
        }
        self->m_child.destroy();
        group_state* g = self->m_group;
        if (e) {
            if (g != nullptr) {
                self->complete_with_error(e);
            } else {
                self->complete_with_error(std::move(e));
            }
        } else if (self->begin_complete()) {
            self->end_complete(future_status::finished);
        }
        self->release();
        if (g != nullptr) group_child_done(g, std::move(e));
    }

    handle_type m_child;
    group_state* m_group;
    lazy_stop_source m_stop;
};

/// Starts `t` as a spawned child on `ex` (pushed on the calling worker's
/// deque when it is one of `ex`'s, else queued with post_item; with no `ex`,
/// run here at once) and returns its future. On a throw nothing is leaked,
/// and `group` (if any) hears of the child as ended.
/// @throws executor_shutdown_error if `ex` refuses work.
template <class T>
future<T> spawn_child(executor_base* ex, task<T> t, group_state* group, lazy_stop_source* parent_stop) {
    if (t.handle().done()) {
        // Already awaited: the future (and the group) hold the misuse error,
        // as awaiting the task would have thrown it.
        auto e = std::make_exception_ptr(
            std::logic_error("hop::spawn: the task was already awaited (a hop::task runs once)"));
        auto* done = new future_state<T>();
        done->complete_with_error(e);
        if (group != nullptr) group_child_done(group, std::move(e));
        return make_future<T>(done);
    }
    spawned<T>* s;
    try {
        s = new spawned<T>(t.handle(), group, parent_stop);
    } catch (...) {
        if (group != nullptr) group_child_done(group, nullptr);
        throw;
    }
    (void)t.release();
    auto fut = make_future<T>(s);
    if (ex == nullptr) {
        s->start_here();
        return fut;
    }
    try {
        // Set before the push, while nobody else can see the state.
        s->set_forked(s->item());
        if (!fork_push_if_worker_of(*ex, s->item())) {
            s->set_forked(nullptr);
            ex->post_item(s->item());
        }
    } catch (...) {
        s->abandon();
        throw;
    }
    return fut;
}

}  // namespace hop::detail
