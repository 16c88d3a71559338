#pragma once
// Runs test cases of this test binary in a fresh child process: for what
// only a whole process shows (static destructors at exit, a lowered
// descriptor limit). The cases run there are marked doctest::skip() and
// look for an environment variable, so the ordinary run passes them by.

#include <doctest/doctest.h>

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace hop_test {

/// Starts `/proc/self/exe --test-case=<filter> --no-skip --minimal` with
/// `extra_env` ("NAME=value") added to the environment (replacing a NAME
/// it inherits); its stdout and
/// stderr go to `out_fd` / `err_fd` where they are not -1. Everything the
/// child needs is made before fork: it only execs. Returns the child's pid.
inline pid_t spawn_self(const std::string& filter, const std::vector<std::string>& extra_env, int out_fd = -1,
                        int err_fd = -1) {
    // An extra NAME=value replaces an inherited NAME.
    const auto name_of = [](std::string_view kv) { return kv.substr(0, kv.find('=') + 1); };
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view kv(*e);
        const bool replaced = std::any_of(extra_env.begin(), extra_env.end(),
                                          [&](const std::string& x) { return name_of(x) == name_of(kv); });
        if (!replaced) env_strings.emplace_back(kv);
    }
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string self = "/proc/self/exe";
    std::string filter_arg = "--test-case=" + filter;
    std::string no_skip = "--no-skip";
    std::string quiet = "--minimal";
    char* argv[] = {self.data(), filter_arg.data(), no_skip.data(), quiet.data(), nullptr};
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (out_fd >= 0) ::dup2(out_fd, 1);
        if (err_fd >= 0) ::dup2(err_fd, 2);
        ::execve(self.c_str(), argv, envp.data());
        ::_exit(127);
    }
    return pid;
}

/// UBSAN_OPTIONS for a child that runs with no descriptor to spare.
/// Before UBSan's vptr check trusts a vtable it writes the memory into a
/// pipe to learn whether it is readable (gcc 12's sanitizer_common,
/// IsAccessibleMemoryRange), and it does so again for each step of the walk
/// through the base classes. With the table full the pipe cannot be made,
/// and a sound object is reported as one of the wrong type, wherever a type
/// is checked for the first time (seen: "object has invalid vptr", and "object
/// is of type epoll_reg" checked as its own base fd_registration).
/// Suppressions do not reach every such report (with no dynamic type there
/// is nothing to match), so the child does not halt on a report, and the
/// parent passes what it wrote to `check_starved_child_reports`.
inline std::string starved_child_ubsan_options() { return "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=0"; }

/// Fails the test for every sanitizer report in `child_stderr` except those
/// of UBSan's vptr check (described above), which cannot work in the child.
inline void check_starved_child_reports(const std::string& child_stderr) {
    std::size_t at = 0;
    while ((at = child_stderr.find("runtime error: ", at)) != std::string::npos) {
        const auto line_start = child_stderr.rfind('\n', at);
        const auto from = line_start == std::string::npos ? 0 : line_start + 1;
        const auto end = child_stderr.find('\n', at);
        const std::string report = child_stderr.substr(from, end == std::string::npos ? std::string::npos : end - from);
        CHECK_MESSAGE(report.find("which does not point to an object of type") != std::string::npos,
                      "the child reported undefined behaviour: " << report);
        at = end == std::string::npos ? child_stderr.size() : end;
    }
    CHECK_MESSAGE(child_stderr.find("ERROR: AddressSanitizer") == std::string::npos, child_stderr);
    CHECK_MESSAGE(child_stderr.find("ERROR: LeakSanitizer") == std::string::npos, child_stderr);
}

}  // namespace hop_test
