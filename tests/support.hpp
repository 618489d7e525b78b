// Helpers shared by the unit tests: a small strict JSON reader, child-process bookkeeping, fds.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace test {

// ---- JSON: enough to check that valve's JSON is well formed and to read values out of it.

struct Json {
  enum class Kind { null, boolean, number, string, array, object } kind = Kind::null;
  bool boolean = false;
  double number = 0;
  std::string text;  // strings; numbers keep their source text too
  std::vector<Json> items;
  struct Member;  // a pair of the name and its value (a std::pair of an incomplete Json is not
                  // allowed, and clang's libstdc++ checks say so)
  std::vector<Member> members;  // in document order

  const Json *get(std::string_view key) const;
  const Json &operator[](std::string_view key) const {
    if (const Json *v = get(key)) return *v;
    throw std::runtime_error("no member " + std::string(key));
  }
  const Json &operator[](size_t i) const { return items.at(i); }
};

struct Json::Member {
  std::string first;
  Json second;
};

inline const Json *Json::get(std::string_view key) const {
  for (const auto &[k, v] : members)
    if (k == key) return &v;
  return nullptr;
}

class JsonReader {
 public:
  explicit JsonReader(std::string_view s) : s_(s) {}

  // Throws std::runtime_error naming the offset on malformed input (trailing bytes included).
  Json document() {
    Json v = value();
    ws();
    if (i_ != s_.size()) fail("trailing bytes");
    return v;
  }

 private:
  [[noreturn]] void fail(const char *what) {
    throw std::runtime_error(std::string("bad JSON at offset ") + std::to_string(i_) + ": " + what);
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
      ++i_;
  }
  bool eat(char c) {
    ws();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail("unexpected character");
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  Json value() {
    if (++depth_ > 64) fail("too deep");
    ws();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.kind = Json::Kind::object;
      if (!eat('}')) {
        do {
          ws();
          std::string key = string();
          expect(':');
          v.members.push_back({std::move(key), value()});
        } while (eat(','));
        expect('}');
      }
    } else if (c == '[') {
      ++i_;
      v.kind = Json::Kind::array;
      if (!eat(']')) {
        do v.items.push_back(value());
        while (eat(','));
        expect(']');
      }
    } else if (c == '"') {
      v.kind = Json::Kind::string;
      v.text = string();
    } else if (literal("true")) {
      v.kind = Json::Kind::boolean;
      v.boolean = true;
    } else if (literal("false")) {
      v.kind = Json::Kind::boolean;
    } else if (literal("null")) {
      v.kind = Json::Kind::null;
    } else {
      v.kind = Json::Kind::number;
      v.text = number();
      v.number = std::strtod(v.text.c_str(), nullptr);
    }
    --depth_;
    return v;
  }
  std::string number() {
    size_t start = i_;
    auto digits = [&] {
      size_t d = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ > d;
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (i_ < s_.size() && s_[i_] == '0') {
      ++i_;
    } else if (!digits()) {
      fail("bad number");
    }
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!digits()) fail("bad fraction");
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) fail("bad exponent");
    }
    return std::string(s_.substr(start, i_ - start));
  }
  std::string string() {
    if (i_ >= s_.size() || s_[i_] != '"') fail("expected a string");
    ++i_;
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[i_++]);
      if (c == '"') return out;
      if (c < 0x20) fail("control character in string");
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          if (i_ + 4 > s_.size()) fail("short \\u escape");
          unsigned cp = 0;
          for (int k = 0; k < 4; ++k) {
            char h = s_[i_++];
            cp <<= 4;
            if (h >= '0' && h <= '9')
              cp |= static_cast<unsigned>(h - '0');
            else if (h >= 'a' && h <= 'f')
              cp |= static_cast<unsigned>(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F')
              cp |= static_cast<unsigned>(h - 'A' + 10);
            else
              fail("bad \\u escape");
          }
          if (cp >= 0x80) fail("only ASCII \\u escapes are expected from valve");
          out += static_cast<char>(cp);
          break;
        }
        default:
          fail("bad escape");
      }
    }
  }

  std::string_view s_;
  size_t i_ = 0;
  int depth_ = 0;
};

inline Json parse_json(std::string_view s) { return JsonReader(s).document(); }

// ---- files

// A file in /tmp with the given text, removed when it goes out of scope.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string &text) {
    char templ[] = "/tmp/valve-test-XXXXXX";
    int fd = mkstemp(templ);
    if (fd < 0) throw std::runtime_error("mkstemp failed");
    close(fd);
    path = templ;
    std::ofstream(path, std::ios::binary) << text;
  }
  ~TempFile() { unlink(path.c_str()); }
  TempFile(const TempFile &) = delete;
  TempFile &operator=(const TempFile &) = delete;
};

// ---- processes

// Waits for a child to end; nullopt if it has not within the timeout (the child is left running).
inline std::optional<int> wait_exit(pid_t pid, double timeout_seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != ECHILD && errno != EINTR) return std::nullopt;
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Kills and reaps a child that a failed check left behind; a no-op for a reaped pid.
inline void kill_and_reap(pid_t pid) {
  if (pid <= 0) return;
  int status = 0;
  if (waitpid(pid, &status, WNOHANG) == pid) return;
  ::kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
}

// A child that is reaped (by PID) however the test ends.
struct ChildGuard {
  pid_t pid = -1;
  explicit ChildGuard(pid_t p = -1) : pid(p) {}
  ~ChildGuard() { kill_and_reap(pid); }
  void release() { pid = -1; }
  ChildGuard(const ChildGuard &) = delete;
  ChildGuard &operator=(const ChildGuard &) = delete;
};

struct FdGuard {
  int fd = -1;
  explicit FdGuard(int f = -1) : fd(f) {}
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
  FdGuard(const FdGuard &) = delete;
  FdGuard &operator=(const FdGuard &) = delete;
};

// A blocking TCP connection to 127.0.0.1:port whose sends and receives give up after `seconds`:
// the descriptor, or -1.
inline int connect_loopback(int port, int seconds = 5) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Makes this process a child subreaper for the guard's lifetime, so orphaned grandchildren are
// reparented to it and can be reaped by PID (PID 1 in a container may never reap them).
struct SubreaperGuard {
  SubreaperGuard() { prctl(PR_SET_CHILD_SUBREAPER, 1); }
  ~SubreaperGuard() { prctl(PR_SET_CHILD_SUBREAPER, 0); }
};

// Reads fd until EOF or the timeout; the fd is left open.
inline std::string read_until_eof(int fd, double timeout_seconds = 5) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  char buf[4096];
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// Reads fd until a newline arrives (returned without it), EOF or the timeout.
inline std::string read_line(int fd, double timeout_seconds = 5) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return out;
    pollfd p{fd, POLLIN, 0};
    int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return out;
    char c;
    ssize_t n = read(fd, &c, 1);
    if (n <= 0) return out;
    if (c == '\n') return out;
    out += c;
  }
}

// The process's state letter from /proc/<pid>/stat ('R', 'S', 'Z', ...); 0 when it is gone.
inline char proc_state(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return 0;
  size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return 0;
  return stat[paren + 2];
}

// Every live (not zombie) process whose process group is pgid.
inline std::vector<pid_t> live_members_of_group(pid_t pgid) {
  std::vector<pid_t> out;
  if (auto *dir = opendir("/proc")) {
    while (dirent *d = readdir(dir)) {
      char *end = nullptr;
      long pid = strtol(d->d_name, &end, 10);
      if (*end != 0 || pid <= 0) continue;
      if (getpgid(static_cast<pid_t>(pid)) != pgid) continue;
      char state = proc_state(static_cast<pid_t>(pid));
      if (state != 0 && state != 'Z' && state != 'X') out.push_back(static_cast<pid_t>(pid));
    }
    closedir(dir);
  }
  return out;
}

// This test binary, to re-run as a helper process (see unit_main.cpp).
inline std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  buf[n] = 0;
  return buf;
}

// Sets an environment variable for the guard's lifetime.
struct EnvGuard {
  std::string name;
  std::optional<std::string> old;
  EnvGuard(const char *n, const char *value) : name(n) {
    if (const char *o = getenv(n)) old = o;
    setenv(n, value, 1);
  }
  ~EnvGuard() {
    if (old) {
      setenv(name.c_str(), old->c_str(), 1);
    } else {
      unsetenv(name.c_str());
    }
  }
};

}  // namespace test
