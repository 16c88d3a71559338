#pragma once
/// @file
/// hop's version: HOP_VERSION_MAJOR / MINOR / PATCH / STRING for the headers
/// compiled against, hop::version() for the library linked at run time.
///
/// meson.build checks these against `project(version:)`: bump both together.

/// The major version: bumped on changes that break the API or the ABI.
#define HOP_VERSION_MAJOR 0
/// The minor version: bumped on additions.
#define HOP_VERSION_MINOR 2
/// The patch version: bumped on fixes.
#define HOP_VERSION_PATCH 0
/// The version as "MAJOR.MINOR.PATCH".
#define HOP_VERSION_STRING "0.2.0"

namespace hop {

/// The version of the libhop linked at run time, as "MAJOR.MINOR.PATCH"
/// (HOP_VERSION_STRING is that of the headers compiled against).
/// Thread-safe; never throws.
const char* version() noexcept;

}  // namespace hop
