// The test main: doctest's, with SIGPIPE ignored so a peer that closes
// early turns into EPIPE rather than killing the test.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>

int main(int argc, char** argv) {
    std::signal(SIGPIPE, SIG_IGN);
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
