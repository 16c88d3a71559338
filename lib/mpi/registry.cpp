// hop::mpi's function registry, the reader's bounds check and the error
// types: the parts that do not touch MPI.

#include <hop/mpi.hpp>

#include "lib/mpi/wire.hpp"

#include <map>
#include <mutex>

namespace hop::mpi {

remote_error::remote_error(int rank, std::string function, std::string message)
    : std::runtime_error("hop::mpi: '" + function + "' failed on rank " + std::to_string(rank) + ": " + message),
      m_rank(rank),
      m_function(std::move(function)),
      m_message(std::move(message)) {}

void reader::need(std::size_t n) const {
    if (n > remaining()) {
        throw std::length_error("hop::mpi::reader: needs " + std::to_string(n) + " more bytes but only " +
                                std::to_string(remaining()) + " are left (the two sides disagree on the data's form)");
    }
}

namespace detail {
namespace {

struct registry {
    std::mutex mutex;
    std::map<std::string, function_entry*, std::less<>> by_name;
};

registry& the_registry() {
    static registry r;  // constructed before the first function registers, whatever the order of static init
    return r;
}

}  // namespace

void register_function(function_entry* e) {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto [it, inserted] = r.by_name.emplace(e->name, e);
    if (!inserted) {
        throw std::logic_error("hop::mpi::function: the name '" + e->name + "' is already registered (signature " +
                               it->second->signature + "; this one is " + e->signature +
                               "): every function needs a name of its own");
    }
}

void unregister_function(function_entry* e) noexcept {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto it = r.by_name.find(e->name);
    if (it != r.by_name.end() && it->second == e) r.by_name.erase(it);
}

const function_entry* find_function(std::string_view name) {
    auto& r = the_registry();
    std::lock_guard lock(r.mutex);
    auto it = r.by_name.find(name);
    return it == r.by_name.end() ? nullptr : it->second;
}

}  // namespace detail
}  // namespace hop::mpi
