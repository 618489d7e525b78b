// Starting worker processes: fork and exec with the guarantees libuv's uv_spawn cannot give (a
// parent-death signal, a process group of their own), and watching them through a pidfd.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace valve {

// Who a child runs as; switching needs valve to run as root.
struct Credentials {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups
};

struct SpawnSpec {
  std::string path;               // resolved executable
  std::vector<std::string> argv;  // argv[0] included
  std::vector<std::string> env;   // KEY=VALUE, the whole environment
  std::string cwd;                // empty: inherit
  std::optional<Credentials> as;  // unset: valve's own user
  std::vector<int> keep_fds;      // passed on as descriptors 3, 4, ... (all others are closed)
  int nice = 0;                   // added to the child's niceness (0 to 19)
  int stdin_fd = -1;              // the child's stdin (-1: /dev/null); the caller closes its own
};

struct Spawned {
  pid_t pid = -1;
  int pidfd = -1;   // readable once the process exits; -1 where the kernel lacks pidfds
  int out_fd = -1;  // the read ends of the child's stdout and stderr
  int err_fd = -1;
};

// Forks and execs spec. The child leads its own process group (so its whole tree can be signalled,
// and a terminal's Ctrl-C reaches only valve), switches to spec.as if set, dies with its parent
// thread (PR_SET_PDEATHSIG, set after the switch, which would clear it), gets default signal
// dispositions, stdin from spec.stdin_fd or /dev/null and no other inherited descriptor.
// Returns 0 or a negative errno.
int spawn_process(const SpawnSpec &spec, Spawned *out);

// Splits a command line into words as a POSIX shell would for a simple command (quotes and
// backslashes); nullopt when it uses shell syntax (pipes, lists, redirections, variables, globs).
// Simple commands are exec'd directly, so the server is valve's child and dies with valve.
std::optional<std::vector<std::string>> split_command(std::string_view line);

// Finds an executable: a path with a slash is checked as it is, otherwise looked up in PATH.
std::optional<std::string> find_executable(const std::string &name);

// Sets spec's program and arguments to run a command line: a simple command whose program is
// found is exec'd directly (so that it, not a shell, is valve's child: only a child gets the
// parent-death signal), anything else runs under /bin/sh -c.
void set_command(SpawnSpec &spec, const std::string &line);

// Signals a worker's whole process group (falls back to the pid alone).
void signal_group(pid_t pid, int sig);

// True when a socket listening on 127.0.0.1/::1 port `port` is held by a process in group pgid.
bool port_listener_in_group(int port, pid_t pgid);

// Picks a loopback TCP port that is free right now (the worker may still lose it in a race).
int pick_free_port();

// Makes this process a child subreaper, so orphans in its tree are reparented to it.
void become_subreaper();

// Wait statuses valve makes up (waitpid never returns negative ones): a process that ended but was
// reaped by another (a forked worker whose template is gone), and one that never started.
constexpr int kExitUnknown = -1;
constexpr int kExitNeverStarted = -2;

// A human-readable exit: "exited with status 1" / "was killed by signal 9 (SIGKILL)".
std::string describe_exit(int wait_status);

// A process's proportional set size from /proc/PID/smaps_rollup (shared pages divided among the
// processes sharing them); nullopt when it cannot be read.
std::optional<uint64_t> read_pss_bytes(pid_t pid);
// The memory the kernel says is available for new work (MemAvailable); nullopt if unknown.
std::optional<uint64_t> available_memory_bytes();

// Environment of this process as KEY=VALUE strings.
std::vector<std::string> current_environment();

}  // namespace valve
