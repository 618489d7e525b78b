// Loaded into the preload template (an R process, see template.cpp) with dyn.load() and called
// through .C(): waits for valve's commands on the control socket and forks workers.
//
// Plain C on libc alone, no R headers: .C() passes pointers, and the one piece of R state touched
// (R_TempDir) is found with dlsym. Built without sanitizers: it runs inside a stock R.
//
// Protocol on the control socket (SOCK_SEQPACKET, one message a packet, text):
//   valve -> template  "fork ID PATH" with the worker's stdout and stderr (SCM_RIGHTS), and on a
//                      second line the worker's own temporary directory, when valve made one,
//                      "spares N" (keep N spares from now on)
//   template -> valve  "ready PID", "forked ID PID", "failed ID ERRNO", "exit ID PID WAITSTATUS",
//                      "spare PID" (a spare was forked), "parked PID" (it is warm and waits),
//                      "lost PID" (a spare died unassigned), "dropped PID" (a spare past the
//                      number valve asked for was killed)
//
// Spares: the template keeps VALVE_PRELOAD_SPARES children forked ahead of demand, or as many as
// valve's last "spares N" said (valve follows recent demand with it). Each starts
// its HTTP server on a socket of its own (VALVE_SPARE_DIR/spare-PID.sock), answers two requests
// of its own and parks in valve_spare_wait(). A "fork" is then handed to the oldest spare over a
// socketpair (the same text and descriptors), and the spare renames its socket to the worker's
// address: it answers at once, where a fresh fork spends 100-250 ms faulting in copy-on-write
// pages. The template then forks a new spare. Once a spare dies unassigned, none is forked again
// (workers are forked on demand).
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

struct child {
  pid_t pid;
  int id;
};

static struct child *children;
static size_t n_children, cap_children;
static int sig_fd = -1;
static sigset_t saved_mask;

#define MAX_SPARES 64
#define SOCKET_PATH_MAX sizeof(((struct sockaddr_un *)0)->sun_path)

// In the template, its parked spares, oldest first: pid, the template's end of the socketpair,
// and the path of the spare's socket. In a spare, its own end and path.
struct spare {
  pid_t pid;
  int fd;
  int parked;  // 0 while it warms up, 1 once it said "parked", -1 if its end closed first
  char path[SOCKET_PATH_MAX];
};
static struct spare spares[MAX_SPARES];
static int n_spares;
static int spares_failed;  // a spare died unassigned: fork on demand from then on
static int spares_wanted = -1;  // from "spares N"; -1: VALVE_PRELOAD_SPARES
static struct spare self_spare = {.fd = -1};

static void send_text(int ctl, const char *text) {
  while (send(ctl, text, strlen(text), MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

static void remember(pid_t pid, int id) {
  if (n_children == cap_children) {
    size_t cap = cap_children ? cap_children * 2 : 64;
    struct child *grown = realloc(children, cap * sizeof *grown);
    if (!grown) return;  // its exit is then reported with id 0: valve matches the pid alone
    children = grown;
    cap_children = cap;
  }
  children[n_children].pid = pid;
  children[n_children].id = id;
  ++n_children;
}

static int forget(pid_t pid) {
  for (size_t i = 0; i < n_children; ++i) {
    if (children[i].pid == pid) {
      int id = children[i].id;
      children[i] = children[--n_children];
      return id;
    }
  }
  return 0;
}

// The template is the parent of every worker it forked: it reaps them and tells valve how each
// ended, since valve cannot wait for a process that is not its child.
static void reap(int ctl) {
  struct signalfd_siginfo info;
  while (read(sig_fd, &info, sizeof info) > 0) {
  }
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    char msg[96];
    int i = 0;
    while (i < n_spares && spares[i].pid != pid) ++i;
    if (i < n_spares) {  // died before it was handed a worker: not a worker's exit
      close(spares[i].fd);
      unlink(spares[i].path);
      memmove(spares + i, spares + i + 1, (size_t)(--n_spares - i) * sizeof *spares);
      spares_failed = 1;
      snprintf(msg, sizeof msg, "lost %d", (int)pid);
      send_text(ctl, msg);
      continue;
    }
    snprintf(msg, sizeof msg, "exit %d %d %d", forget(pid), (int)pid, status);
    send_text(ctl, msg);
  }
}

// Ends the worker's whole process group once valve is gone: the write end of the lifeline pipe is
// valve's alone, so a read returns 0 only when valve has exited, however it died. A worker cannot
// use PR_SET_PDEATHSIG for this: its parent is the template, whose death it must survive.
static void *watch_lifeline(void *arg) {
  int fd = (int)(intptr_t)arg;
  char c;
  for (;;) {
    ssize_t n = read(fd, &c, 1);
    if (n == 0 || (n < 0 && errno != EINTR)) break;
  }
  kill(0, SIGKILL);
  return NULL;
}

// A temporary directory of the worker's own: R deletes tempdir() when it quits, and the one the
// template made is shared by every worker forked from it. With `dir` (the directory valve made for
// this worker, and removes once it has exited however it ended) it is made there, and dir becomes
// the worker's TMPDIR; without, beside the template's.
static void own_tempdir(const char *dir) {
  char **r_tempdir = (char **)dlsym(RTLD_DEFAULT, "R_TempDir");
  char path[PATH_MAX];
  if (dir && *dir) {
    setenv("TMPDIR", dir, 1);
    if (!r_tempdir) return;
    if (snprintf(path, sizeof path, "%s/RtmpXXXXXX", dir) >= (int)sizeof path) return;
  } else {
    if (!r_tempdir || !*r_tempdir) return;
    const char *slash = strrchr(*r_tempdir, '/');
    int len = slash ? (int)(slash - *r_tempdir) : 0;
    if (snprintf(path, sizeof path, "%.*s/RtmpXXXXXX", len, *r_tempdir) >= (int)sizeof path) return;
  }
  if (!mkdtemp(path)) return;
  char *copy = strdup(path);
  if (copy) *r_tempdir = copy;  // the template's string stays: it is not this process's to free
}

// In a child just forked: drops the template's state and becomes a process of its own.
static void become_child(int ctl, int lifeline) {
  close(ctl);
  close(sig_fd);
  sig_fd = -1;
  for (int i = 0; i < n_spares; ++i) close(spares[i].fd);  // the template's ends
  n_spares = 0;
  free(children);
  children = NULL;
  n_children = cap_children = 0;
  sigprocmask(SIG_SETMASK, &saved_mask, NULL);
  setpgid(0, 0);  // its own group, as a launched worker has: valve signals the group
  if (lifeline >= 0) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  // R's signal handlers must run on R's thread
    pthread_t thread;
    if (pthread_create(&thread, NULL, watch_lifeline, (void *)(intptr_t)lifeline) == 0)
      pthread_detach(thread);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
}

// Becoming a worker: its output goes to the pipes valve reads, and it gets a tempdir of its own
// (a spare uses the template's until then, so that killing an unused spare leaves nothing).
static void become_worker(int out, int err, const char *tmpdir) {
  dup2(out, 1);
  dup2(err, 2);
  close(out);
  close(err);
  own_tempdir(tmpdir);
}

// A fresh random seed for R's set.seed(): never NA_integer_ (INT_MIN).
static int fresh_seed(void) {
  unsigned r = 0;
  if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
    r = (unsigned)getpid() ^ (unsigned)time(NULL);
  return (int)(r & 0x7fffffff);
}

static int received_fds(struct msghdr *msg, int fds[2]) {
  int n = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    int *data = (int *)CMSG_DATA(c);
    for (size_t i = 0; i < count; ++i) {
      if (n < 2) {
        fds[n++] = data[i];
      } else {
        close(data[i]);
      }
    }
  }
  return n;
}

// Receives one "fork ID PATH[\nTMPDIR]" message and its two pipes from fd (valve's control socket,
// or a spare's end of its socketpair) into buf. 1: a well-formed one (*worker, buf + *path_at,
// buf + *tmp_at, pipes: the newline becomes the end of PATH, *tmp_at is 0 without a TMPDIR);
// 0: a malformed one (its descriptors closed, *worker what could be read); 2: "spares N" (N in
// *worker); -1: the peer is gone; -2: nothing to read (EINTR, EAGAIN).
static int receive_fork(int fd, char *buf, size_t size, size_t path_cap, int pipes[2], int *worker,
                        int *path_at, int *tmp_at) {
  union {
    char space[CMSG_SPACE(4 * sizeof(int))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {.iov_base = buf, .iov_len = size - 1};
  struct msghdr msg = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.space,
                       .msg_controllen = sizeof control.space};
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return -2;
  if (n <= 0) return -1;
  buf[n] = 0;
  int got = received_fds(&msg, pipes);
  *worker = 0;
  *path_at = 0;
  *tmp_at = 0;
  int wanted;
  if (got == 0 && sscanf(buf, "spares %d", &wanted) == 1 && wanted >= 0) {
    *worker = wanted;
    return 2;
  }
  int parsed = sscanf(buf, "fork %d %n", worker, path_at) == 1 && *path_at > 0;
  char *newline = parsed ? strchr(buf + *path_at, '\n') : NULL;
  if (newline) {
    *newline = 0;
    *tmp_at = (int)(newline + 1 - buf);
  }
  if (got != 2 || !parsed || *worker <= 0 || strlen(buf + *path_at) > path_cap) {
    for (int i = 0; i < got; ++i) close(pipes[i]);
    return 0;
  }
  return 1;
}

static void report_fork(int ctl, int worker, pid_t pid, int error) {
  char reply[64];
  if (pid < 0) {
    snprintf(reply, sizeof reply, "failed %d %d", worker, error);
  } else {
    setpgid(pid, pid);  // also here, so the group exists before valve hears of the pid
    remember(pid, worker);
    snprintf(reply, sizeof reply, "forked %d %d", worker, (int)pid);
  }
  send_text(ctl, reply);
}

// Hands the "fork" message (text and pipes) to the oldest parked spare, or else the oldest still
// warming up; true when one took it (the template's copies of the pipes are then closed).
static int hand_to_spare(int ctl, const char *text, int pipes[2], int worker) {
  while (n_spares > 0) {
    int i = 0;
    while (i < n_spares && spares[i].parked != 1) ++i;
    if (i == n_spares) i = 0;
    struct spare taken = spares[i];
    memmove(spares + i, spares + i + 1, (size_t)(--n_spares - i) * sizeof *spares);
    union {
      char space[CMSG_SPACE(2 * sizeof(int))];
      struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct iovec iov = {.iov_base = (void *)text, .iov_len = strlen(text)};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(2 * sizeof(int));
    memcpy(CMSG_DATA(c), pipes, 2 * sizeof(int));
    ssize_t n;
    while ((n = sendmsg(taken.fd, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
    }
    close(taken.fd);
    if (n < 0) {                 // it died and is not reaped yet: the next one, or a fork on demand
      kill(taken.pid, SIGKILL);  // valve ignores the exit of a pid it does not know
      continue;
    }
    close(pipes[0]);
    close(pipes[1]);
    report_fork(ctl, worker, taken.pid, 0);  // its exit is now a worker's
    return 1;
  }
  return 0;
}

// Forks a spare if fewer than VALVE_PRELOAD_SPARES are there and none is warming up (one at a
// time: a warming spare takes a core for 100-250 ms, which workers serving a spike need more);
// true in the new spare (*socket_path then holds the path its server listens on until it is
// handed a worker, *seed its random seed).
static int fork_spares(int ctl, int lifeline, char **socket_path, size_t path_cap, int *seed) {
  const char *dir = getenv("VALVE_SPARE_DIR");
  const char *want_text = getenv("VALVE_PRELOAD_SPARES");
  int want = spares_wanted >= 0 ? spares_wanted : want_text ? atoi(want_text) : 0;
  if (want > MAX_SPARES) want = MAX_SPARES;
  if (!dir || !*dir) return 0;
  for (int i = 0; i < n_spares; ++i) {
    if (spares[i].parked == 0) return 0;
  }
  if (n_spares < want && !spares_failed) {
    struct spare *next = &spares[n_spares];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return 0;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
      close(sv[0]);
      close(sv[1]);
      return 0;
    }
    if (pid == 0) {
      close(sv[0]);
      become_child(ctl, lifeline);
      self_spare.pid = getpid();
      self_spare.fd = sv[1];
      int len = snprintf(self_spare.path, sizeof self_spare.path, "%s/spare-%d.sock", dir,
                         (int)self_spare.pid);
      if (len < 0 || (size_t)len >= sizeof self_spare.path || (size_t)len > path_cap) _exit(1);
      strcpy(*socket_path, self_spare.path);
      *seed = fresh_seed();
      return 1;
    }
    close(sv[1]);
    setpgid(pid, pid);
    next->pid = pid;
    next->fd = sv[0];
    next->parked = 0;
    snprintf(next->path, sizeof next->path, "%s/spare-%d.sock", dir, (int)pid);
    ++n_spares;
    char msg[32];
    snprintf(msg, sizeof msg, "spare %d", (int)pid);
    send_text(ctl, msg);
  }
  return 0;
}

// Valve asked for `want` spares: those past it are killed, the newest first (the least warm).
// The template reaps them; valve ignores the exit of a pid that is none of its workers.
static void keep_spares(int ctl, int want) {
  spares_wanted = want > MAX_SPARES ? MAX_SPARES : want;
  while (n_spares > spares_wanted) {
    struct spare *last = &spares[--n_spares];
    close(last->fd);
    unlink(last->path);
    kill(last->pid, SIGKILL);
    char msg[32];
    snprintf(msg, sizeof msg, "dropped %d", (int)last->pid);
    send_text(ctl, msg);
  }
}

// A warming spare wrote to its end of the socketpair (or closed it): it is parked.
static void spare_said(int ctl, pid_t pid) {
  for (int i = 0; i < n_spares; ++i) {
    if (spares[i].pid != pid) continue;
    char buf[16];
    ssize_t n = recv(spares[i].fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    spares[i].parked = n > 0 ? 1 : -1;  // -1: it is dying, and reaped soon
    if (n > 0) {
      char msg[32];
      snprintf(msg, sizeof msg, "parked %d", (int)pid);
      send_text(ctl, msg);
    }
    return;
  }
}

// .C("valve_template_serve", ctl, lifeline, id, socket, seed). Returns in a forked worker with
// *id > 0, *socket its address (written into the buffer R passed) and *seed a fresh random seed;
// in a new spare with *id == -1, *socket the path its server is to listen on and *seed; in the
// template with *id == 0 once valve has closed the control socket.
EXPORT void valve_template_serve(int *ctl_fd, int *lifeline_fd, int *id, char **socket_path,
                                 int *seed) {
  int ctl = *ctl_fd;
  size_t path_cap = strlen(*socket_path);
  *id = 0;
  if (sig_fd < 0) {
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &saved_mask);
    sig_fd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sig_fd < 0) return;
    char msg[32];
    snprintf(msg, sizeof msg, "ready %d", (int)getpid());
    send_text(ctl, msg);
  }
  for (;;) {
    // Spares are forked when valve asks for nothing else: requests come first in a spike.
    struct pollfd pending = {.fd = ctl, .events = POLLIN};
    if (poll(&pending, 1, 0) == 0 && fork_spares(ctl, *lifeline_fd, socket_path, path_cap, seed)) {
      *id = -1;  // in the new spare
      return;
    }
    struct pollfd fds[2 + MAX_SPARES] = {{.fd = ctl, .events = POLLIN},
                                         {.fd = sig_fd, .events = POLLIN}};
    pid_t warming[MAX_SPARES];
    nfds_t n_fds = 2;
    for (int i = 0; i < n_spares; ++i) {
      if (spares[i].parked != 0) continue;
      warming[n_fds - 2] = spares[i].pid;
      fds[n_fds++] = (struct pollfd){.fd = spares[i].fd, .events = POLLIN};
    }
    if (poll(fds, n_fds, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (nfds_t f = 2; f < n_fds; ++f) {
      if (fds[f].revents) spare_said(ctl, warming[f - 2]);
    }
    if (fds[1].revents) reap(ctl);
    if (!fds[0].revents) continue;
    char buf[2 * PATH_MAX + 64];  // the socket's path and the temporary directory's
    int pipes[2] = {-1, -1};
    int worker, path_at, tmp_at;
    int got = receive_fork(ctl, buf, sizeof buf, path_cap, pipes, &worker, &path_at, &tmp_at);
    if (got == -2) continue;
    if (got == -1) return;  // valve closed the channel (or is gone): the template ends
    if (got == 2) {
      keep_spares(ctl, worker);
      continue;
    }
    if (got == 0) {
      char reply[64];
      snprintf(reply, sizeof reply, "failed %d %d", worker, EINVAL);
      send_text(ctl, reply);
      continue;
    }
    if (tmp_at > 0) buf[tmp_at - 1] = '\n';  // the spare is handed the whole message
    if (!hand_to_spare(ctl, buf, pipes, worker)) {
      if (tmp_at > 0) buf[tmp_at - 1] = 0;
      fflush(NULL);  // nothing buffered in the template may be written twice
      pid_t pid = fork();
      int fork_errno = errno;
      if (pid == 0) {
        become_child(ctl, *lifeline_fd);
        become_worker(pipes[0], pipes[1], tmp_at > 0 ? buf + tmp_at : NULL);
        strcpy(*socket_path, buf + path_at);
        *seed = fresh_seed();
        *id = worker;
        return;
      }
      close(pipes[0]);
      close(pipes[1]);
      report_fork(ctl, worker, pid, fork_errno);
    }
  }
}

// The spare's warm-up: a thread of the spare sends the readiness probe's request twice to the
// spare's own server while R serves them (valve_spare_warmed() is polled between
// httpuv::service() calls), so the spare faults in the pages of its whole request path before
// it is handed a worker, not while valve waits for it.
static int spare_warmed;

static void *warm_up_spare(void *arg) {
  (void)arg;
  static const char request[] =
      "GET /__valve/ready HTTP/1.1\r\nHost: valve\r\nUser-Agent: valve-probe\r\n"
      "Connection: close\r\n\r\n";
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  strcpy(addr.sun_path, self_spare.path);
  for (int i = 0; i < 2; ++i) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) break;
    struct timeval limit = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    char buf[1024];
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0 &&
        send(fd, request, sizeof request - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof request - 1)) {
      while (read(fd, buf, sizeof buf) > 0) {
      }
    }
    close(fd);
  }
  __atomic_store_n(&spare_warmed, 1, __ATOMIC_RELEASE);
  return NULL;
}

// .C("valve_spare_warm_up", started): starts the warm-up thread; *started = 0 if it could not.
EXPORT void valve_spare_warm_up(int *started) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  *started = pthread_create(&thread, NULL, warm_up_spare, NULL) == 0;
  if (*started) pthread_detach(thread);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

// .C("valve_spare_warmed", done): *done = 1 once the warm-up thread has finished.
EXPORT void valve_spare_warmed(int *done) {
  *done = __atomic_load_n(&spare_warmed, __ATOMIC_ACQUIRE);
}

// .C("valve_spare_wait", id, socket), in a spare with its server started: waits for a worker to
// become. Returns with *id > 0 and its address in *socket (the spare's socket renamed there), or
// with *id == 0 once the template is gone (the spare then quits).
EXPORT void valve_spare_wait(int *id, char **socket_path) {
  size_t path_cap = strlen(*socket_path);
  *id = 0;
  send(self_spare.fd, "parked", 6, MSG_NOSIGNAL);
  for (;;) {
    char buf[2 * PATH_MAX + 64];  // the socket's path and the temporary directory's
    int pipes[2] = {-1, -1};
    int worker, path_at, tmp_at;
    int got =
        receive_fork(self_spare.fd, buf, sizeof buf, path_cap, pipes, &worker, &path_at, &tmp_at);
    if (got == -2) continue;
    if (got != 1) return;  // the template is gone (a malformed message: it checked it first)
    close(self_spare.fd);
    self_spare.fd = -1;
    become_worker(pipes[0], pipes[1], tmp_at > 0 ? buf + tmp_at : NULL);
    // Atomic: a client connects to the spare's listening socket under its new name, never to
    // nothing once the name exists.
    if (rename(self_spare.path, buf + path_at) != 0) return;
    strcpy(*socket_path, buf + path_at);
    *id = worker;
    return;
  }
}
