#include "admin_auth.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "util.hpp"

namespace valve {

std::string admin_token_problem(std::string_view token) {
  if (token.empty()) return "is empty: write the token in it (like openssl rand -hex 32)";
  if (token.size() > kMaxAdminTokenSize)
    return fmt::format("holds more than {} bytes: a token is one short line", kMaxAdminTokenSize);
  for (char c : token) {
    if (c < 0x21 || c > 0x7e)
      return "holds a space, a control character or a second line: a token is one line of "
             "visible ASCII";
  }
  return "";
}

std::optional<AdminToken> read_admin_token(const std::string &path, std::string *why) {
  auto fail = [why](std::string reason) -> std::optional<AdminToken> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(fmt::format("cannot read: {}", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return fail("not a regular file");
  }
  std::string text;
  char buf[1024];
  while (text.size() <= kMaxAdminTokenSize + 2) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return fail(fmt::format("cannot read: {}", std::strerror(e)));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (text.ends_with('\n')) text.pop_back();
  if (text.ends_with('\r')) text.pop_back();
  if (std::string problem = admin_token_problem(text); !problem.empty()) return fail(problem);
  AdminToken out;
  out.token = std::move(text);
  if (st.st_mode & S_IROTH) {
    out.warning =
        fmt::format("is readable by every user (mode {:04o}): chmod o-r it", st.st_mode & 07777);
  } else if (out.token.size() < 16) {
    out.warning = fmt::format(
        "holds a short token ({} characters): use 16 or more random ones, like openssl rand -hex "
        "32",
        out.token.size());
  }
  return out;
}

std::optional<std::string_view> bearer_token(std::string_view authorization) {
  authorization = trim(authorization);
  constexpr std::string_view kScheme = "bearer";
  if (authorization.size() <= kScheme.size() ||
      !iequals(authorization.substr(0, kScheme.size()), kScheme) ||
      (authorization[kScheme.size()] != ' ' && authorization[kScheme.size()] != '\t'))
    return std::nullopt;
  std::string_view token = trim(authorization.substr(kScheme.size()));
  if (token.empty()) return std::nullopt;
  return token;
}

bool tokens_equal(std::string_view given, std::string_view expected) {
  // Every byte of given is compared, against expected's bytes in turn: no early exit, and no
  // branch on the data.
  if (expected.empty()) return false;
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i)
    diff |= static_cast<unsigned char>(given[i]) ^
            static_cast<unsigned char>(expected[i % expected.size()]);
  return diff == 0;
}

bool is_loopback(const ListenAddress &address) {
  return !address.is_unix() && is_loopback_ip(address.host);
}

}  // namespace valve
