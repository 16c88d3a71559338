#pragma once
/// @file
/// hop::http — HTTP/1.1 client and server over hop's sockets. The parser is
/// llhttp; the core of hop never includes this header.

#include <hop/http/message.hpp>
#include <hop/http/client.hpp>
#include <hop/http/server.hpp>
