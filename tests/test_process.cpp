// process.hpp: spawning workers (group, parent-death signal, fds, signals), exits, ports.
#include "process.hpp"

#include <doctest/doctest.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "support.hpp"

using test::ChildGuard;
using test::FdGuard;

namespace {

// A spawned child whose fds are closed and whose pid is reaped however the test ends.
struct Child {
  valve::Spawned s;
  ChildGuard guard;
  FdGuard out, err, pidfd;
  int rc;
  explicit Child(const valve::SpawnSpec &spec) : rc(valve::spawn_process(spec, &s)) {
    guard.pid = s.pid;
    out.fd = s.out_fd;
    err.fd = s.err_fd;
    pidfd.fd = s.pidfd;
  }
  // Waits for the exit and returns the wait status (reaping the child).
  int wait(double timeout = 5) {
    auto st = test::wait_exit(s.pid, timeout);
    REQUIRE_MESSAGE(st.has_value(), "child " << s.pid << " did not exit in time");
    guard.release();
    return *st;
  }
};

valve::SpawnSpec shell(const std::string &script) {
  valve::SpawnSpec spec;
  spec.path = "/bin/sh";
  spec.argv = {"sh", "-c", script};
  spec.env = valve::current_environment();
  return spec;
}

int listen_on_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
      listen(fd, 4) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

TEST_CASE("process: a child's stdout, stderr and exit status come back") {
  Child c(shell("echo out; echo err >&2; exit 3"));
  REQUIRE(c.rc == 0);
  CHECK(c.s.pid > 0);
  CHECK(c.s.out_fd >= 0);
  CHECK(c.s.err_fd >= 0);
  CHECK(test::read_until_eof(c.s.out_fd) == "out\n");
  CHECK(test::read_until_eof(c.s.err_fd) == "err\n");
  int status = c.wait();
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 3);
  CHECK(valve::describe_exit(status) == "exited with status 3");
  // The parent's ends are close-on-exec: they do not leak into the next worker.
  CHECK((fcntl(c.s.out_fd, F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((fcntl(c.s.err_fd, F_GETFD) & FD_CLOEXEC) != 0);
  if (c.s.pidfd >= 0) CHECK((fcntl(c.s.pidfd, F_GETFD) & FD_CLOEXEC) != 0);
}

TEST_CASE("process: the child leads its own process group; SIGKILL is described") {
  Child c(shell("exec sleep 30"));
  REQUIRE(c.rc == 0);
  CHECK(getpgid(c.s.pid) == c.s.pid);  // set by the parent too, so true at once
  CHECK(getpgid(c.s.pid) != getpgrp());
  REQUIRE(kill(c.s.pid, SIGKILL) == 0);
  int status = c.wait();
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK(valve::describe_exit(status) == "was killed by signal 9 (SIGKILL)");
}

TEST_CASE("process: describe_exit") {
  CHECK(valve::describe_exit(0) == "exited with status 0");
  CHECK(valve::describe_exit(W_EXITCODE(127, 0)) == "exited with status 127");
  CHECK(valve::describe_exit(W_EXITCODE(0, SIGTERM)) == "was killed by signal 15 (SIGTERM)");
  CHECK(valve::describe_exit(W_EXITCODE(0, SIGSEGV) | WCOREFLAG) ==
        "was killed by signal 11 (SIGSEGV)");
  CHECK(valve::describe_exit(W_STOPCODE(SIGSTOP)).starts_with("ended with wait status "));
  CHECK(valve::describe_exit(valve::kExitUnknown) ==
        "ended (its exit status is unknown: another process reaped it)");
  CHECK(valve::describe_exit(valve::kExitNeverStarted) == "never started");
}

TEST_CASE("process: keep_fds become descriptors 3, 4, ... in the child, in order") {
  int a[2], b[2];
  REQUIRE(pipe2(a, O_CLOEXEC) == 0);
  REQUIRE(pipe2(b, O_CLOEXEC) == 0);
  FdGuard a0(a[0]), a1(a[1]), b0(b[0]), b1(b[1]);
  // Crossed on purpose: b's write end goes to 3, a's to 4, whatever their numbers here.
  valve::SpawnSpec spec = shell(
      "echo three >&3; echo four >&4; test -e /proc/$$/fd/5 && echo "
      "leaked || echo closed");
  spec.keep_fds = {b[1], a[1]};
  Child c(spec);
  REQUIRE(c.rc == 0);
  CHECK(c.wait() == 0);
  ::close(a1.fd);
  ::close(b1.fd);
  a1.fd = b1.fd = -1;
  CHECK(test::read_until_eof(b[0]) == "three\n");
  CHECK(test::read_until_eof(a[0]) == "four\n");
  CHECK(test::read_until_eof(c.s.out_fd) == "closed\n");
}

TEST_CASE("process: read_pss_bytes reads this process's proportional set size") {
  auto pss = valve::read_pss_bytes(getpid());
  REQUIRE(pss.has_value());
  CHECK(*pss > 1024 * 1024);
  CHECK_FALSE(valve::read_pss_bytes(-5).has_value());
}

TEST_CASE("process: signal_group reaches the whole group, grandchildren included") {
  test::SubreaperGuard subreaper;  // the orphaned grandchild comes back to us to be reaped
  Child c(shell("sleep 30 & echo $!; wait"));
  REQUIRE(c.rc == 0);
  std::string line = test::read_line(c.s.out_fd);
  pid_t grandchild = static_cast<pid_t>(std::atoi(line.c_str()));
  REQUIRE(grandchild > 0);
  ChildGuard grandchild_guard(grandchild);
  CHECK(getpgid(grandchild) == c.s.pid);

  valve::signal_group(c.s.pid, SIGKILL);
  int status = c.wait();
  CHECK(WIFSIGNALED(status));
  auto gstatus = test::wait_exit(grandchild, 2);
  REQUIRE(gstatus.has_value());
  grandchild_guard.release();
  CHECK(WIFSIGNALED(*gstatus));
  CHECK(WTERMSIG(*gstatus) == SIGKILL);

  // A process with no group of its own is still reached by its pid; pid <= 0 is ignored.
  valve::signal_group(0, SIGKILL);
  valve::signal_group(-1, SIGKILL);
}

TEST_CASE("process: stdin is /dev/null, no other descriptor leaks, cwd and env are applied") {
  int leaked = open("/dev/null", O_RDONLY);  // deliberately not close-on-exec
  REQUIRE(leaked >= 3);
  FdGuard leaked_guard(leaked);
  valve::SpawnSpec spec =
      shell("readlink /proc/self/fd/0; test -e /proc/$$/fd/" + std::to_string(leaked) +
            " && echo leaked || echo closed; pwd; echo \"A=$A\"; echo \"HOME=${HOME-unset}\"");
  spec.cwd = "/tmp";
  spec.env = {"A=1", "PATH=/usr/bin:/bin"};
  Child c(spec);
  REQUIRE(c.rc == 0);
  CHECK(test::read_until_eof(c.s.out_fd) == "/dev/null\nclosed\n/tmp\nA=1\nHOME=unset\n");
  CHECK(test::read_until_eof(c.s.err_fd) == "");
  CHECK(c.wait() == 0);
}

TEST_CASE("process: the child gets an empty signal mask and default dispositions") {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &block, &old) == 0);
  struct sigaction ignore {
  }, old_usr2{};
  ignore.sa_handler = SIG_IGN;
  REQUIRE(sigaction(SIGUSR2, &ignore, &old_usr2) == 0);

  // exec keeps the mask and ignored signals, so grep reports what spawn_process left it.
  valve::SpawnSpec spec;
  spec.path = "/bin/grep";
  if (access(spec.path.c_str(), X_OK) != 0) spec.path = "/usr/bin/grep";
  spec.argv = {"grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"};
  Child c(spec);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  sigaction(SIGUSR2, &old_usr2, nullptr);
  REQUIRE(c.rc == 0);
  CHECK(test::read_until_eof(c.s.out_fd) ==
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
  CHECK(c.wait() == 0);
}

TEST_CASE("process: an exec failure is reported by the child on stderr with status 127") {
  valve::SpawnSpec spec;
  spec.path = "/no/such/program";
  spec.argv = {"program"};
  Child c(spec);
  REQUIRE(c.rc == 0);  // fork succeeded; the failure is the child's
  CHECK(test::read_until_eof(c.s.err_fd) == "valve: cannot start worker: exec failed, errno 2\n");
  int status = c.wait();
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 127);

  valve::SpawnSpec bad_cwd = shell("echo never");
  bad_cwd.cwd = "/no/such/dir";
  Child c2(bad_cwd);
  REQUIRE(c2.rc == 0);
  CHECK(test::read_until_eof(c2.s.err_fd) == "valve: cannot start worker: chdir failed, errno 2\n");
  CHECK(test::read_until_eof(c2.s.out_fd) == "");
  CHECK(WEXITSTATUS(c2.wait()) == 127);
}

TEST_CASE("process: the pidfd becomes readable when the child exits") {
  Child c(shell("exec sleep 30"));
  REQUIRE(c.rc == 0);
  REQUIRE_MESSAGE(c.s.pidfd >= 0, "this kernel has no pidfd_open");
  pollfd p{c.s.pidfd, POLLIN, 0};
  CHECK(poll(&p, 1, 50) == 0);  // alive: not readable
  REQUIRE(kill(c.s.pid, SIGKILL) == 0);
  p.revents = 0;
  CHECK(poll(&p, 1, 2000) == 1);
  CHECK((p.revents & POLLIN) != 0);
  CHECK(WIFSIGNALED(c.wait()));

  // And for a child that ends on its own.
  Child c2(shell("exit 0"));
  REQUIRE(c2.rc == 0);
  REQUIRE(c2.s.pidfd >= 0);
  pollfd p2{c2.s.pidfd, POLLIN, 0};
  CHECK(poll(&p2, 1, 2000) == 1);
  CHECK(c2.wait() == 0);
}

namespace {

// Spawns `echo up; sleep` from an intermediate process that then exits; the grandchild must die
// with it (PR_SET_PDEATHSIG), also when spawned as another user (a switch clears the setting).
void check_dies_with_parent(std::optional<valve::Credentials> as) {
  test::SubreaperGuard subreaper;  // the orphan is reparented to us, so we can reap it by pid
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  FdGuard rd(pipe_fds[0]);
  pid_t intermediate = fork();
  REQUIRE(intermediate >= 0);
  if (intermediate == 0) {
    close(pipe_fds[0]);
    valve::Spawned s;
    valve::SpawnSpec spec = shell("echo up; exec sleep 30");
    spec.as = as;
    if (valve::spawn_process(spec, &s) != 0) _exit(2);
    // Wait until the grandchild has run past prctl (it printed), then hand over its pid and die.
    char buf[8];
    if (read(s.out_fd, buf, 3) != 3) _exit(3);
    pid_t gc = s.pid;
    if (write(pipe_fds[1], &gc, sizeof gc) != sizeof gc) _exit(4);
    _exit(0);
  }
  close(pipe_fds[1]);
  ChildGuard intermediate_guard(intermediate);
  pid_t grandchild = -1;
  pollfd p{rd.fd, POLLIN, 0};
  REQUIRE(poll(&p, 1, 5000) == 1);
  REQUIRE(read(rd.fd, &grandchild, sizeof grandchild) == sizeof grandchild);
  REQUIRE(grandchild > 0);
  ChildGuard grandchild_guard(grandchild);  // reapable once reparented to this subreaper

  auto ist = test::wait_exit(intermediate, 5);
  REQUIRE(ist.has_value());
  intermediate_guard.release();
  CHECK(*ist == 0);

  auto gst = test::wait_exit(grandchild, 2);
  REQUIRE_MESSAGE(gst.has_value(), "grandchild " << grandchild << " outlived its parent by 2 s");
  grandchild_guard.release();
  CHECK(WIFSIGNALED(*gst));
  CHECK(WTERMSIG(*gst) == SIGKILL);
  CHECK(kill(grandchild, 0) == -1);
}

const valve::Credentials kNobody{65534, 65534, {65534}};

}  // namespace

TEST_CASE("process: the child dies with its parent (PR_SET_PDEATHSIG)") {
  check_dies_with_parent(std::nullopt);
  if (geteuid() == 0) check_dies_with_parent(kNobody);
}

TEST_CASE("process: spec.as switches the child's user and groups, or the child says why not") {
  valve::SpawnSpec spec = shell("id -u; id -g; id -G");
  spec.as = kNobody;
  Child c(spec);
  REQUIRE(c.rc == 0);
  std::string out = test::read_until_eof(c.s.out_fd);
  std::string err = test::read_until_eof(c.s.err_fd);
  int status = c.wait();
  REQUIRE(WIFEXITED(status));
  if (geteuid() == 0) {
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(out == "65534\n65534\n65534\n");
  } else {
    CHECK(WEXITSTATUS(status) == 127);
    CHECK(err.starts_with("valve: cannot start worker: setgroups failed, errno "));
  }
}

TEST_CASE("process: find_executable") {
  test::EnvGuard path("PATH", "/usr/local/bin:/usr/bin:/bin");
  auto sh = valve::find_executable("sh");
  REQUIRE(sh.has_value());
  CHECK((*sh == "/bin/sh" || *sh == "/usr/bin/sh"));
  CHECK(valve::find_executable("/bin/sh") == std::optional<std::string>("/bin/sh"));
  CHECK_FALSE(valve::find_executable("no-such-program-xyz").has_value());
  CHECK_FALSE(valve::find_executable("").has_value());
  CHECK_FALSE(valve::find_executable("/no/such/sh").has_value());
  CHECK_FALSE(valve::find_executable("/etc/passwd").has_value());  // not executable
  CHECK_FALSE(valve::find_executable("/bin").has_value());         // a directory
  {
    test::EnvGuard empty_path("PATH", "/nonexistent-dir");
    CHECK_FALSE(valve::find_executable("sh").has_value());
  }
}

TEST_CASE("process: pick_free_port returns a port that can be bound") {
  int port = valve::pick_free_port();
  REQUIRE(port > 0);
  CHECK(port < 65536);
  int fd = listen_on_loopback(port);
  CHECK(fd >= 0);
  if (fd >= 0) close(fd);
}

TEST_CASE("process: port_listener_in_group finds the group that holds a listening port") {
  // A listener held by this process, in this process's group.
  int own_port = valve::pick_free_port();
  REQUIRE(own_port > 0);
  FdGuard own(listen_on_loopback(own_port));
  REQUIRE(own.fd >= 0);
  CHECK(valve::port_listener_in_group(own_port, getpgrp()));

  // A listener held by a spawned child (this binary re-run as a helper, see unit_main.cpp).
  std::string self = test::self_exe();
  REQUIRE_FALSE(self.empty());
  int port = valve::pick_free_port();
  REQUIRE(port > 0);
  valve::SpawnSpec spec;
  spec.path = self;
  spec.argv = {self, "--as-listener=" + std::to_string(port)};
  Child c(spec);
  REQUIRE(c.rc == 0);
  REQUIRE(test::read_line(c.s.out_fd) == "listening");
  CHECK(valve::port_listener_in_group(port, c.s.pid));
  CHECK_FALSE(valve::port_listener_in_group(port, getpgrp()));
  CHECK_FALSE(valve::port_listener_in_group(own_port, c.s.pid));

  // A port nobody holds.
  int free_port = valve::pick_free_port();
  REQUIRE(free_port > 0);
  CHECK_FALSE(valve::port_listener_in_group(free_port, c.s.pid));
  CHECK_FALSE(valve::port_listener_in_group(free_port, getpgrp()));

  valve::signal_group(c.s.pid, SIGKILL);
  CHECK(WIFSIGNALED(c.wait()));
  CHECK_FALSE(valve::port_listener_in_group(port, c.s.pid));
}

TEST_CASE("process: current_environment mirrors environ") {
  test::EnvGuard var("VALVE_UNIT_TEST_VAR", "x=y");
  auto env = valve::current_environment();
  CHECK(std::find(env.begin(), env.end(), "VALVE_UNIT_TEST_VAR=x=y") != env.end());
}

TEST_CASE("process: split_command splits simple commands as sh would") {
  using Words = std::vector<std::string>;
  const std::pair<const char *, Words> simple[] = {
      {"srv --port 8080", {"srv", "--port", "8080"}},
      {"  srv\t--port   8080  ", {"srv", "--port", "8080"}},
      {"/opt/my app/srv", {"/opt/my", "app/srv"}},
      {"'/opt/my app/srv' -x", {"/opt/my app/srv", "-x"}},
      {"\"/opt/my app/srv\" -x", {"/opt/my app/srv", "-x"}},
      {"srv a\\ b", {"srv", "a b"}},
      {"srv \"say \\\"hi\\\"\"", {"srv", "say \"hi\""}},
      {"srv \"back\\\\slash\" \"keep\\n\"", {"srv", "back\\slash", "keep\\n"}},
      {"srv 'single $HOME `x` \\'", {"srv", "single $HOME `x` \\"}},
      {"srv pre'quoted'post", {"srv", "prequotedpost"}},
      {"srv ''", {"srv", ""}},
      {"srv a#b --opt=x", {"srv", "a#b", "--opt=x"}},
  };
  for (const auto &entry : simple) {
    const auto &[line, words] = entry;
    INFO("line: " << entry.first);
    auto got = valve::split_command(line);
    REQUIRE(got.has_value());
    CHECK(*got == words);
  }
  // Shell syntax: left to /bin/sh.
  for (const char *line : {"a | b",
                           "a && b",
                           "a; b",
                           "a > out",
                           "a < in",
                           "a &",
                           "(a)",
                           "echo $HOME",
                           "echo \"$HOME\"",
                           "echo `id`",
                           "echo \"`id`\"",
                           "ls *.R",
                           "ls ?",
                           "ls [ab]",
                           "# comment",
                           "~/bin/srv",
                           "A=1 srv",
                           "",
                           "   ",
                           "srv 'unterminated",
                           "srv \"unterminated",
                           "srv trailing\\"}) {
    INFO("line: " << line);
    CHECK_FALSE(valve::split_command(line).has_value());
  }
}

TEST_CASE("process: split_command leaves commands with newlines to sh") {
  CHECK_FALSE(valve::split_command("srv --port 1\nother --flag").has_value());
  auto continued = valve::split_command("srv --port \\\n1");
  CHECK((!continued || *continued == std::vector<std::string>{"srv", "--port", "1"}));
}
