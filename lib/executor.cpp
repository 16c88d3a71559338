// The thread-local executor pointer, the inline-resume trampoline, the frame
// allocator, and the blocking loop behind sync_wait.

#include <hop/detail/executor.hpp>
#include <hop/task.hpp>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>

#ifndef HOP_FRAME_CACHE
#define HOP_FRAME_CACHE 1
#endif

namespace hop::detail {

namespace {
thread_local executor_base* tl_current = nullptr;
}  // namespace

executor_base* current_executor() noexcept { return tl_current; }

executor_base* exchange_current_executor(executor_base* ex) noexcept {
    auto* prev = tl_current;
    tl_current = ex;
    return prev;
}

namespace {
// Inline resumptions nest at most this deep on one thread; deeper ones are
// queued and run by the outermost resume_inline once it unwinds.
constexpr int max_inline_depth = 16;
struct trampoline {
    int depth = 0;
    std::deque<std::coroutine_handle<>> pending;
};
thread_local trampoline tl_trampoline;
}  // namespace

void resume_inline(std::coroutine_handle<> h) noexcept {
    auto& t = tl_trampoline;
    if (t.depth >= max_inline_depth) {
        t.pending.push_back(h);
        return;
    }
    ++t.depth;
    h.resume();
    if (t.depth == 1) {
        while (!t.pending.empty()) {
            auto next = t.pending.front();
            t.pending.pop_front();
            next.resume();
        }
    }
    --t.depth;
}

namespace {
constexpr std::size_t frame_granule = 64;  // cache line
constexpr std::size_t frame_classes = 32;  // frames up to 2 KiB are cached
constexpr std::size_t frames_per_class = 64;

struct frame_cache {
    struct node {
        node* next;
    };
    node* heads[frame_classes] = {};
    std::uint32_t counts[frame_classes] = {};
    ~frame_cache() {
        for (auto*& head : heads) {
            while (head) {
                auto* n = head;
                head = head->next;
                ::operator delete(n);
            }
        }
    }
};
thread_local frame_cache tl_frames;

constexpr std::size_t class_of(std::size_t size) noexcept { return (size + frame_granule - 1) / frame_granule - 1; }
}  // namespace

void* frame_allocate(std::size_t size) {
    if constexpr (HOP_FRAME_CACHE) {
        auto c = class_of(size);
        if (c < frame_classes) {
            auto& cache = tl_frames;
            if (auto* n = cache.heads[c]) {
                cache.heads[c] = n->next;
                --cache.counts[c];
                return n;
            }
            return ::operator new((c + 1) * frame_granule);
        }
    }
    return ::operator new(size);
}

void frame_deallocate(void* p, std::size_t size) noexcept {
    if constexpr (HOP_FRAME_CACHE) {
        auto c = class_of(size);
        if (c < frame_classes) {
            auto& cache = tl_frames;
            if (cache.counts[c] < frames_per_class) {
                auto* n = static_cast<frame_cache::node*>(p);
                n->next = cache.heads[c];
                cache.heads[c] = n;
                ++cache.counts[c];
                return;
            }
        }
    }
    ::operator delete(p);
}

struct blocking_loop::impl {
    std::mutex mutex;
    std::condition_variable cv;
    work_item* head = nullptr;
    work_item* tail = nullptr;
    bool finished = false;
};

blocking_loop::blocking_loop() : m_impl(new impl) {}
blocking_loop::~blocking_loop() { delete m_impl; }

void blocking_loop::post_item(work_item* w) { post_continuation(w); }

void blocking_loop::post_continuation(work_item* w) noexcept {
    auto& i = *m_impl;
    w->next = nullptr;
    std::lock_guard lock(i.mutex);
    if (i.tail) {
        i.tail->next = w;
    } else {
        i.head = w;
    }
    i.tail = w;
    i.cv.notify_one();
}

void blocking_loop::finish() noexcept {
    auto& i = *m_impl;
    std::lock_guard lock(i.mutex);
    i.finished = true;
    i.cv.notify_one();
}

void blocking_loop::run_until_finished() noexcept {
    auto& i = *m_impl;
    for (;;) {
        work_item* batch = nullptr;
        {
            std::unique_lock lock(i.mutex);
            i.cv.wait(lock, [&] { return i.head != nullptr || i.finished; });
            if (i.head == nullptr) return;  // finished and drained
            batch = std::exchange(i.head, nullptr);
            i.tail = nullptr;
        }
        while (batch) {
            auto* next = batch->next;
            batch->run(batch);
            batch = next;
        }
    }
}

}  // namespace hop::detail
