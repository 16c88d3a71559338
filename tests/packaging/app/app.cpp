// The application CI builds against an installed or packaged hop (CMake,
// pkg-config, a Meson subproject, the Debian packages): a pool map, and an
// HTTP fetch, from a hop server it starts on 127.0.0.1 or from the URL given.
// usage: app [URL]   exit status 0 when every check passed.
#include <hop/hop.hpp>
#include <hop/http.hpp>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <utility>
#include <vector>

namespace {

hop::task<int> fetch(std::string url) {
    hop::http::client http;
    hop::http::response r = co_await http.get(url);
    std::printf("GET %s: %d, %zu bytes\n", url.c_str(), r.status, r.body.size());
    co_return r.status == 200 ? 0 : 1;
}

hop::task<int> fetch_local() {
    auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0),
                                       [](hop::http::request& req) -> hop::task<hop::http::response> {
                                           hop::http::response r;
                                           r.body = "hello from hop " + req.url;
                                           co_return r;
                                       });
    hop::task_group serving;
    serving.spawn(srv.serve());
    int status = 1;
    {
        hop::http::client http;
        const std::string url = "http://" + srv.local_endpoint().to_string() + "/packaged";
        hop::http::response r = co_await http.get(url);
        std::printf("GET %s: %d \"%s\"\n", url.c_str(), r.status, r.body.c_str());
        if (r.status == 200 && r.body == "hello from hop /packaged") status = 0;
    }
    srv.shutdown();
    co_await serving.wait();
    co_return status;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::printf("hop %s (headers %s)\n", hop::version(), HOP_VERSION_STRING);
        if (std::strcmp(hop::version(), HOP_VERSION_STRING) != 0) return 1;

        hop::cpu_pool pool{2};
        std::vector<int> items{1, 2, 3, 4};
        std::vector<int> squares = pool.map([](int x) { return x * x; }, items).get();
        std::printf("pool.map: %d %d %d %d\n", squares[0], squares[1], squares[2], squares[3]);
        if (squares != std::vector<int>{1, 4, 9, 16}) return 1;

        const int status = argc > 1 ? hop::run(fetch(argv[1])) : hop::run(fetch_local());
        std::printf(status == 0 ? "ok\n" : "FAILED\n");
        return status;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAILED: %s\n", e.what());
        return 1;
    }
}
