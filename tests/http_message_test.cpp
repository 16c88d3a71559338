#include <hop/http/message.hpp>

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <string_view>

using namespace std::literals;
namespace http = hop::http;

namespace {

// The invalid_argument's message, or "" if none was thrown.
template <class F>
std::string invalid_what(F&& f) {
    try {
        f();
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "";
}

bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_SUITE("http_message") {

TEST_CASE("headers: add, get case-insensitively, keep order and repeats") {
    http::headers h;
    h.add("Accept", "text/plain");
    h.add("Set-Cookie", "a=1");
    h.add("set-cookie", "b=2");
    CHECK(h.size() == 3);
    REQUIRE(h.get("ACCEPT"));
    CHECK(*h.get("accept") == "text/plain");
    CHECK(*h.get("Set-Cookie") == "a=1");
    auto all = h.get_all("SET-COOKIE");
    REQUIRE(all.size() == 2);
    CHECK(all[0] == "a=1");
    CHECK(all[1] == "b=2");
    CHECK(h.contains("set-COOKIE"));
    CHECK_FALSE(h.contains("Cookie"));
    CHECK_FALSE(h.get("Content-Type"));
    CHECK(h.get_all("Content-Type").empty());

    std::vector<std::string> names;
    for (const auto& f : h) names.push_back(f.name);
    CHECK(names == std::vector<std::string>{"Accept", "Set-Cookie", "set-cookie"});
}

TEST_CASE("headers: set replaces every field of that name, erase counts") {
    http::headers h{{"A", "1"}, {"b", "2"}, {"a", "3"}};
    h.set("A", "4");
    CHECK(h.get_all("a") == std::vector<std::string_view>{"4"});
    CHECK(h.size() == 2);
    CHECK(h.erase("B") == 1);
    CHECK(h.erase("B") == 0);
    CHECK(h.size() == 1);
    h.clear();
    CHECK(h.empty());
}

TEST_CASE("headers: empty values and every tchar are accepted") {
    http::headers h;
    h.add("X-Empty", "");
    h.add("!#$%&'*+-.^_`|~09azAZ", "v\twith tab and \x80 high bytes");
    CHECK(*h.get("x-empty") == "");
    CHECK(h.size() == 2);
}

TEST_CASE("headers: bad names are rejected, naming the field") {
    http::headers h;
    CHECK(contains(invalid_what([&] { h.add("", "v"); }), "empty header name"));
    for (std::string_view bad : {"X Y"sv, "X:Y"sv, "X\rY"sv, "X\nY"sv, "Ä"sv, "X(Y)"sv, "X\"Y"sv, "X/Y"sv,
                                 "X@Y"sv, "X{Y"sv, "X\0Y"sv}) {
        CAPTURE(bad);
        std::string w = invalid_what([&] { h.add(bad, "v"); });
        CHECK(contains(w, "header name"));
        CHECK(contains(w, "not an HTTP token"));
    }
    CHECK(contains(invalid_what([&] { h.add("X Y", "v"); }), "\"X Y\""));
    CHECK(h.empty());
}

TEST_CASE("headers: CR, LF or NUL in a value is rejected (no header injection)") {
    http::headers h;
    for (std::string_view bad : {"a\r\nX-Evil: 1"sv, "a\nb"sv, "a\rb"sv, "a\0b"sv}) {
        CAPTURE(bad);
        std::string w = invalid_what([&] { h.add("X-Name", bad); });
        CHECK(contains(w, "\"X-Name\""));
        CHECK(contains(w, "CR, LF or NUL"));
        w = invalid_what([&] { h.set("X-Name", bad); });
        CHECK(contains(w, "\"X-Name\""));
    }
    CHECK(h.empty());
    // set() validates before it removes the old value.
    h.add("X-Name", "kept");
    CHECK_THROWS_AS(h.set("X-Name", "a\nb"), std::invalid_argument);
    CHECK(*h.get("X-Name") == "kept");
    CHECK_THROWS_AS((http::headers{{"Ok", "1"}, {"Bad Name", "2"}}), std::invalid_argument);
}

TEST_CASE("iequals") {
    CHECK(http::iequals("Content-Length", "content-LENGTH"));
    CHECK(http::iequals("", ""));
    CHECK_FALSE(http::iequals("abc", "abd"));
    CHECK_FALSE(http::iequals("abc", "abcd"));
    // Only ASCII letters fold: '@' (0x40) and '`' (0x60) differ.
    CHECK_FALSE(http::iequals("@", "`"));
    CHECK_FALSE(http::iequals("[", "{"));
}

TEST_CASE("reason_phrase") {
    CHECK(http::reason_phrase(200) == "OK");
    CHECK(http::reason_phrase(404) == "Not Found");
    CHECK(http::reason_phrase(100) == "Continue");
    CHECK(http::reason_phrase(413) == "Content Too Large");
    CHECK(http::reason_phrase(431) == "Request Header Fields Too Large");
    CHECK(http::reason_phrase(503) == "Service Unavailable");
    CHECK(http::reason_phrase(299) == "");
    CHECK(http::reason_phrase(-1) == "");
    CHECK(http::reason_phrase(1000) == "");
}

TEST_CASE("url::parse: good URLs") {
    auto u = http::url::parse("http://example.org/items?id=1");
    CHECK(u.scheme == "http");
    CHECK(u.host == "example.org");
    CHECK(u.port == 80);
    CHECK(u.target == "/items?id=1");

    u = http::url::parse("https://Example.ORG");
    CHECK(u.scheme == "https");
    CHECK(u.host == "example.org");
    CHECK(u.port == 443);
    CHECK(u.target == "/");

    u = http::url::parse("HTTP://127.0.0.1:8080");
    CHECK(u.scheme == "http");
    CHECK(u.host == "127.0.0.1");
    CHECK(u.port == 8080);
    CHECK(u.target == "/");

    u = http::url::parse("http://[::1]:8080/items?id=1");
    CHECK(u.host == "::1");
    CHECK(u.port == 8080);
    CHECK(u.target == "/items?id=1");

    u = http::url::parse("http://[2001:db8::7]/");
    CHECK(u.host == "2001:db8::7");
    CHECK(u.port == 80);

    u = http::url::parse("http://h?q=1#frag");
    CHECK(u.target == "/?q=1");
    u = http::url::parse("http://h/p#frag?not-query");
    CHECK(u.target == "/p");
    u = http::url::parse("http://h#frag");
    CHECK(u.target == "/");
    u = http::url::parse("http://h:65535/");
    CHECK(u.port == 65535);
    u = http::url::parse("http://h:1");
    CHECK(u.port == 1);
    u = http::url::parse("http://h/a%20b");
    CHECK(u.target == "/a%20b");
}

TEST_CASE("url::parse: bad URLs name the text and the fault") {
    struct bad_case {
        std::string_view text;
        std::string_view why;
    };
    for (auto [text, why] : {
             bad_case{"", "no scheme"},
             bad_case{"example.org/x", "no scheme"},
             bad_case{"ftp://h/", "unsupported scheme"},
             bad_case{"http:/h/", "no scheme"},
             bad_case{"http:///path", "empty host"},
             bad_case{"http://:80/", "empty host"},
             bad_case{"http://[]/", "empty host"},
             bad_case{"http://[::1/", "unterminated IPv6"},
             bad_case{"http://[zz::1]/", "bad IPv6 literal"},
             bad_case{"http://[::1]x/", "after the IPv6 literal"},
             bad_case{"http://user:pw@h/", "userinfo"},
             bad_case{"http://user@h/", "userinfo"},
             bad_case{"http://h:/", "empty port"},
             bad_case{"http://h:0/", "bad port"},
             bad_case{"http://h:65536/", "bad port"},
             bad_case{"http://h:99999999999999999999/", "bad port"},
             bad_case{"http://h:8a/", "bad port"},
             bad_case{"http://h:-1/", "bad port"},
             bad_case{"http://h:+80/", "bad port"},
             bad_case{"http://h o/", "space"},
             bad_case{"http://h/a b", "space"},
             bad_case{"http://h/a\tb", "control character"},
             bad_case{"http://h/a\r\nb", "control character"},
             bad_case{"http://h/\x7f", "control character"},
             bad_case{"http://h/\xc3\xa4", "non-ASCII"},
             bad_case{"http://h<x>/", "bad character"},
         }) {
        CAPTURE(text);
        std::string w = invalid_what([&] { (void)http::url::parse(text); });
        CHECK(contains(w, why));
        CHECK(contains(w, "bad URL"));
    }
    // The message quotes the text (control bytes escaped).
    CHECK(contains(invalid_what([] { (void)http::url::parse("ftp://h/"); }), "\"ftp://h/\""));
    CHECK(contains(invalid_what([] { (void)http::url::parse("http://h/a\nb"); }), "\"http://h/a\\x0ab\""));
}

TEST_CASE("url: authority and to_string") {
    CHECK(http::url::parse("http://h/").authority() == "h");
    CHECK(http::url::parse("http://h:80/").authority() == "h");
    CHECK(http::url::parse("http://h:443/").authority() == "h:443");
    CHECK(http::url::parse("https://h:443/").authority() == "h");
    CHECK(http::url::parse("https://h:80/").authority() == "h:80");
    CHECK(http::url::parse("http://[::1]:8080/x").authority() == "[::1]:8080");
    CHECK(http::url::parse("http://[::1]/x").authority() == "[::1]");
    CHECK(http::url::parse("http://[::1]:8080/x?y").to_string() == "http://[::1]:8080/x?y");
    CHECK(http::url::parse("HTTPS://H:443").to_string() == "https://h/");
    // A round trip is stable.
    auto u = http::url::parse("http://127.0.0.1:9/a/b?c=d");
    auto v = http::url::parse(u.to_string());
    CHECK(v.to_string() == u.to_string());
    CHECK(v.same_origin(u));
}

TEST_CASE("url::resolve") {
    auto base = http::url::parse("http://h:8080/a/b/c?q=1");
    CHECK(base.resolve("https://other/x").to_string() == "https://other/x");
    CHECK(base.resolve("//other:81/x").to_string() == "http://other:81/x");
    CHECK(base.resolve("/x/y?z").to_string() == "http://h:8080/x/y?z");
    CHECK(base.resolve("d").to_string() == "http://h:8080/a/b/d");
    CHECK(base.resolve("d/").to_string() == "http://h:8080/a/b/d/");
    CHECK(base.resolve("../d").to_string() == "http://h:8080/a/d");
    CHECK(base.resolve("../../../../d").to_string() == "http://h:8080/d");
    CHECK(base.resolve("./d").to_string() == "http://h:8080/a/b/d");
    CHECK(base.resolve(".").to_string() == "http://h:8080/a/b/");
    CHECK(base.resolve("..").to_string() == "http://h:8080/a/");
    CHECK(base.resolve("/x/./y/../z").to_string() == "http://h:8080/x/z");
    CHECK(base.resolve("?r=2").to_string() == "http://h:8080/a/b/c?r=2");
    CHECK(base.resolve("#frag").to_string() == base.to_string());
    CHECK(base.resolve("d#frag").to_string() == "http://h:8080/a/b/d");
    CHECK(http::url::parse("http://h").resolve("x").to_string() == "http://h/x");

    for (auto bad : {""sv, "ftp://h/x"sv, "mailto:me@h"sv, "http://"sv, "/a b"sv, "/a\r\nSet-Cookie: x"sv,
                     "//user@h/"sv}) {
        CAPTURE(bad);
        std::string w = invalid_what([&] { (void)base.resolve(bad); });
        CHECK(contains(w, "Location"));
    }
}

TEST_CASE("url::same_origin") {
    auto a = http::url::parse("http://h/x");
    CHECK(a.same_origin(http::url::parse("http://H:80/y")));
    CHECK_FALSE(a.same_origin(http::url::parse("https://h/x")));
    CHECK_FALSE(a.same_origin(http::url::parse("http://h:81/x")));
    CHECK_FALSE(a.same_origin(http::url::parse("http://g/x")));
}

TEST_CASE("errors derive as documented") {
    http::protocol_error p("bad");
    CHECK(std::string(p.what()) == "bad");
    http::connect_timeout c("c");
    const hop::timeout_error& t = c;
    CHECK(std::string(t.what()) == "c");
    CHECK(std::is_base_of_v<hop::timeout_error, http::read_timeout>);
    CHECK(std::is_base_of_v<hop::timeout_error, http::pool_timeout>);
    CHECK(std::is_base_of_v<std::runtime_error, http::redirect_error>);
}

}  // TEST_SUITE
