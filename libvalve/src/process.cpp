#include "process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

extern char **environ;

namespace valve {

namespace {

void write_all(int fd, const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

[[noreturn]] void child_fail(const char *what, int err) {
  char buf[32];
  int i = sizeof buf - 1;
  buf[i] = 0;
  unsigned v = static_cast<unsigned>(err);
  do {
    buf[--i] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v && i > 0);
  write_all(2, "valve: cannot start worker: ");
  write_all(2, what);
  write_all(2, " failed, errno ");
  write_all(2, buf + i);
  write_all(2, "\n");
  _exit(127);
}

}  // namespace

int spawn_process(const SpawnSpec &spec, Spawned *out) {
  std::vector<char *> argv;
  for (const auto &a : spec.argv) argv.push_back(const_cast<char *>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char *> envp;
  for (const auto &e : spec.env) envp.push_back(const_cast<char *>(e.c_str()));
  envp.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return -errno;
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    return -e;
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  pid_t parent = getpid();
  std::vector<int> keep = spec.keep_fds;  // the child's copy is rewritten before exec

  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1], devnull}) close(fd);
    return -e;
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only until exec.
    setpgid(0, 0);
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
    }
    if (dup2(spec.stdin_fd >= 0 ? spec.stdin_fd : devnull >= 0 ? devnull : out_pipe[1], 0) < 0)
      child_fail("dup2", errno);
    if (dup2(out_pipe[1], 1) < 0) child_fail("dup2", errno);
    if (dup2(err_pipe[1], 2) < 0) child_fail("dup2", errno);
    // Descriptors to keep go to 3, 4, ...: first above every target, so none is overwritten.
    int first_free = 3 + static_cast<int>(keep.size());
    for (int &fd : keep) {
      fd = fcntl(fd, F_DUPFD, first_free);
      if (fd < 0) child_fail("fcntl", errno);
    }
    for (size_t i = 0; i < keep.size(); ++i) {
      if (dup2(keep[i], 3 + static_cast<int>(i)) < 0) child_fail("dup2", errno);
    }
    if (close_range(static_cast<unsigned>(first_free), UINT_MAX, 0) != 0) {
      for (int fd = first_free; fd < 65536; ++fd) close(fd);
    }
    // Before the user switch: the lower priority is set for the child's every thread to come.
    if (spec.nice > 0) {
      errno = 0;
      if (::nice(spec.nice) == -1 && errno != 0) child_fail("nice", errno);
    }
    if (spec.as) {
      // Groups first: once the user is switched, the right to change them is gone.
      if (setgroups(spec.as->groups.size(), spec.as->groups.data()) != 0)
        child_fail("setgroups", errno);
      if (setgid(spec.as->gid) != 0) child_fail("setgid", errno);
      if (setuid(spec.as->uid) != 0) child_fail("setuid", errno);
    }
    // After the switch, which clears it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the parent died before prctl took effect
    if (!spec.cwd.empty() && chdir(spec.cwd.c_str()) != 0) child_fail("chdir", errno);
    execve(spec.path.c_str(), argv.data(), envp.data());
    child_fail("exec", errno);
  }
  // Parent. Also set the group here, so signalling the group works even before the child runs.
  setpgid(pid, pid);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (devnull >= 0) close(devnull);
  out->pid = pid;
  out->pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (out->pidfd >= 0) fcntl(out->pidfd, F_SETFD, FD_CLOEXEC);
  out->out_fd = out_pipe[0];
  out->err_fd = err_pipe[0];
  return 0;
}

std::optional<std::vector<std::string>> split_command(std::string_view line) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (c == '\n') return std::nullopt;  // ends a command: a list, for the shell
    if (c == ' ' || c == '\t') {
      if (in_word) words.push_back(std::move(word));
      word.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\'') {
      size_t end = line.find('\'', i + 1);
      if (end == std::string_view::npos) return std::nullopt;
      word.append(line.substr(i + 1, end - i - 1));
      i = end;
    } else if (c == '"') {
      for (++i; i < line.size() && line[i] != '"'; ++i) {
        if (line[i] == '$' || line[i] == '`') return std::nullopt;
        bool escape = line[i] == '\\' && i + 1 < line.size() &&
                      std::string_view("\"\\$`").find(line[i + 1]) != std::string_view::npos;
        if (escape) ++i;
        word += line[i];
      }
      if (i >= line.size()) return std::nullopt;
    } else if (c == '\\') {
      if (++i >= line.size() || line[i] == '\n') return std::nullopt;
      word += line[i];
    } else if (std::string_view("|&;<>()$`*?[").find(c) != std::string_view::npos ||
               ((c == '#' || c == '~') && word.empty())) {
      return std::nullopt;
    } else {
      word += c;
    }
  }
  if (in_word) words.push_back(std::move(word));
  if (words.empty() || words.front().find('=') != std::string::npos)
    return std::nullopt;  // VAR=x cmd
  return words;
}

std::optional<std::string> find_executable(const std::string &name) {
  if (name.empty()) return std::nullopt;
  auto usable = [](const std::string &p) {
    struct stat st {};
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(p.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    if (usable(name)) return name;
    return std::nullopt;
  }
  const char *path = getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  std::stringstream ss(dirs);
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (usable(candidate)) return candidate;
  }
  return std::nullopt;
}

void signal_group(pid_t pid, int sig) {
  if (pid <= 0) return;
  if (kill(-pid, sig) != 0) kill(pid, sig);
}

namespace {

std::set<unsigned long> listening_inodes(int port) {
  std::set<unsigned long> inodes;
  for (const char *table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, timer, retr, uid, timeout;
      unsigned long inode = 0;
      fields >> sl >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >>
          inode;
      if (state != "0A") continue;  // LISTEN
      auto colon = local.rfind(':');
      if (colon == std::string::npos) continue;
      if (std::stoi(local.substr(colon + 1), nullptr, 16) == port) inodes.insert(inode);
    }
  }
  return inodes;
}

}  // namespace

bool port_listener_in_group(int port, pid_t pgid) {
  auto inodes = listening_inodes(port);
  if (inodes.empty()) return false;
  DIR *proc = opendir("/proc");
  if (!proc) return false;
  bool found = false;
  while (dirent *d = readdir(proc)) {
    char *end = nullptr;
    long pid = strtol(d->d_name, &end, 10);
    if (*end != 0 || pid <= 0) continue;
    if (getpgid(static_cast<pid_t>(pid)) != pgid) continue;
    std::string fd_dir = fmt::format("/proc/{}/fd", pid);
    DIR *fds = opendir(fd_dir.c_str());
    if (!fds) continue;
    while (dirent *f = readdir(fds)) {
      char target[64];
      std::string link = fd_dir + "/" + f->d_name;
      ssize_t n = readlink(link.c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = 0;
      unsigned long inode = 0;
      if (sscanf(target, "socket:[%lu]", &inode) == 1 && inodes.count(inode)) {
        found = true;
        break;
      }
    }
    closedir(fds);
    if (found) break;
  }
  closedir(proc);
  return found;
}

int pick_free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  } else {
    port = -errno;
  }
  close(fd);
  return port;
}

void become_subreaper() { prctl(PR_SET_CHILD_SUBREAPER, 1); }

std::string describe_exit(int status) {
  if (status == kExitUnknown)
    return "ended (its exit status is unknown: another process reaped it)";
  if (status == kExitNeverStarted) return "never started";
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    const char *abbrev = sigabbrev_np(sig);
    return fmt::format("was killed by signal {} (SIG{})", sig, abbrev ? abbrev : "?");
  }
  return fmt::format("ended with wait status {}", status);
}

void set_command(SpawnSpec &spec, const std::string &line) {
  auto words = split_command(line);
  std::optional<std::string> program = words ? find_executable(words->front()) : std::nullopt;
  if (program) {
    spec.path = *program;
    spec.argv = std::move(*words);
  } else {
    spec.path = "/bin/sh";
    spec.argv = {"/bin/sh", "-c", line};
  }
}

namespace {
// The bytes of a "NAME: N kB" line of a /proc file; nullopt when there is none.
std::optional<uint64_t> read_kb_line(const std::string &path, std::string_view name) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with(name) || line.size() <= name.size() || line[name.size()] != ':')
      continue;
    unsigned long kb = 0;
    if (sscanf(line.c_str() + name.size() + 1, " %lu kB", &kb) == 1) return uint64_t{kb} * 1024;
  }
  return std::nullopt;
}
}  // namespace

std::optional<uint64_t> read_pss_bytes(pid_t pid) {
  return read_kb_line(fmt::format("/proc/{}/smaps_rollup", pid), "Pss");
}

std::optional<uint64_t> available_memory_bytes() {
  return read_kb_line("/proc/meminfo", "MemAvailable");
}

std::vector<std::string> current_environment() {
  std::vector<std::string> env;
  for (char **e = environ; e && *e; ++e) env.emplace_back(*e);
  return env;
}

}  // namespace valve
