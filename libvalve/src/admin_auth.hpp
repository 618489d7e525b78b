// The admin interface's bearer token: read from a file (admin-token-file), taken from an
// Authorization header, compared in constant time. Never logged: messages name the file, not the
// token.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "config.hpp"

namespace valve {

// The environment variable that holds the token itself when admin-token-file is not set.
inline constexpr const char *kAdminTokenVariable = "VALVE_ADMIN_TOKEN";

// The longest token file read; a token is a few dozen bytes.
inline constexpr size_t kMaxAdminTokenSize = 4096;

struct AdminToken {
  std::string token;
  std::string warning;  // set when the file is readable by every user, or the token is short
};

// What is wrong with a token ("is empty", "holds a space, ..."), or "" when it is fine: 1 to 4096
// visible ASCII characters.
std::string admin_token_problem(std::string_view token);

// Reads the token from path: one trailing newline (\n or \r\n) is dropped; the rest must be 1 to
// 4096 visible ASCII characters (no spaces). nullopt with *why ("is empty", "cannot read: ...").
std::optional<AdminToken> read_admin_token(const std::string &path, std::string *why);

// The token of an Authorization header's value "Bearer TOKEN" (the scheme in any case, then one or
// more spaces); nullopt for another scheme or no token.
std::optional<std::string_view> bearer_token(std::string_view authorization);

// Whether two tokens are equal, in a time that depends on the length of `given` only, never on
// where it first differs from `expected`, nor on expected's length.
bool tokens_equal(std::string_view given, std::string_view expected);

// 127.0.0.0/8 and ::1 (a Unix socket is not an address: false).
bool is_loopback(const ListenAddress &address);

}  // namespace valve
