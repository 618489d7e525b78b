// Loaded into the preload template (an R process, see template.cpp) with dyn.load() and called
// through .C(): waits for valve's commands on the control socket and forks workers.
//
// Plain C on libc alone, no R headers: .C() passes pointers, and the one piece of R state touched
// (R_TempDir) is found with dlsym. Built without sanitizers: it runs inside a stock R.
//
// Protocol on the control socket (SOCK_SEQPACKET, one message a packet, text):
//   valve -> template  "fork ID PATH" with the worker's stdout and stderr (SCM_RIGHTS)
//   template -> valve  "ready PID", "forked ID PID", "failed ID ERRNO", "exit ID PID WAITSTATUS"
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
// template made is shared by every worker forked from it.
static void own_tempdir(void) {
  char **r_tempdir = (char **)dlsym(RTLD_DEFAULT, "R_TempDir");
  if (!r_tempdir || !*r_tempdir) return;
  char path[PATH_MAX];
  const char *slash = strrchr(*r_tempdir, '/');
  int len = slash ? (int)(slash - *r_tempdir) : 0;
  if (snprintf(path, sizeof path, "%.*s/RtmpXXXXXX", len, *r_tempdir) >= (int)sizeof path) return;
  if (!mkdtemp(path)) return;
  char *copy = strdup(path);
  if (copy) *r_tempdir = copy;  // the template's string stays: it is not this process's to free
}

static void become_worker(int ctl, int lifeline, int out, int err) {
  close(ctl);
  close(sig_fd);
  sig_fd = -1;
  free(children);
  children = NULL;
  n_children = cap_children = 0;
  sigprocmask(SIG_SETMASK, &saved_mask, NULL);
  setpgid(0, 0);  // its own group, as a launched worker has: valve signals the group
  dup2(out, 1);
  dup2(err, 2);
  close(out);
  close(err);
  if (lifeline >= 0) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  // R's signal handlers must run on R's thread
    pthread_t thread;
    if (pthread_create(&thread, NULL, watch_lifeline, (void *)(intptr_t)lifeline) == 0)
      pthread_detach(thread);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  own_tempdir();
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

// .C("valve_template_serve", ctl, lifeline, id, socket, seed). Returns in a forked worker with
// *id > 0, *socket its address (written into the buffer R passed) and *seed a fresh random seed;
// returns in the template with *id == 0 once valve has closed the control socket.
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
    struct pollfd fds[2] = {{.fd = ctl, .events = POLLIN}, {.fd = sig_fd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) reap(ctl);
    if (!fds[0].revents) continue;
    char buf[PATH_MAX + 64];
    union {
      char space[CMSG_SPACE(4 * sizeof(int))];
      struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf - 1};
    struct msghdr msg = {.msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n = recvmsg(ctl, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;  // valve closed the channel (or is gone): the template ends
    buf[n] = 0;
    int pipes[2] = {-1, -1};
    int got = received_fds(&msg, pipes);
    int worker = 0, path_at = 0;
    if (got != 2 || sscanf(buf, "fork %d %n", &worker, &path_at) != 1 || worker <= 0 ||
        path_at == 0 || strlen(buf + path_at) > path_cap) {
      for (int i = 0; i < got; ++i) close(pipes[i]);
      char reply[64];
      snprintf(reply, sizeof reply, "failed %d %d", worker, EINVAL);
      send_text(ctl, reply);
      continue;
    }
    fflush(NULL);  // nothing buffered in the template may be written twice
    pid_t pid = fork();
    if (pid == 0) {
      become_worker(ctl, *lifeline_fd, pipes[0], pipes[1]);
      strcpy(*socket_path, buf + path_at);
      unsigned r = 0;
      if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (unsigned)getpid() ^ (unsigned)time(NULL);
      *seed = (int)(r & 0x7fffffff);  // never NA_integer_ (INT_MIN)
      *id = worker;
      return;
    }
    close(pipes[0]);
    close(pipes[1]);
    char reply[64];
    if (pid < 0) {
      snprintf(reply, sizeof reply, "failed %d %d", worker, errno);
    } else {
      setpgid(pid, pid);  // also here, so the group exists before valve hears of the pid
      remember(pid, worker);
      snprintf(reply, sizeof reply, "forked %d %d", worker, (int)pid);
    }
    send_text(ctl, reply);
  }
}
