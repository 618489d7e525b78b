#include "preloader.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "config.hpp"
#include "context.hpp"
#include "json.hpp"
#include "launch.hpp"
#include "line_reader.hpp"
#include "process.hpp"
#include "sandbox.hpp"
#include "stats.hpp"
#include "tempdir.hpp"
#include "util.hpp"
#include "worker.hpp"

namespace valve {

extern const unsigned char kPreloadHelper[];  // preload_helper.c, built and embedded by meson
extern const size_t kPreloadHelperSize;

namespace {

constexpr unsigned kMaxDeaths =
    3;  // deaths in a row, without a fork between, before plain launches

// Run by the template: load the API once, then fork workers on valve's request (the helper's
// .C() returns in each forked child). See preloader.hpp.
constexpr const char *kTemplateScript =
    R"R(# Written by valve. The preload template: loads one plumber API, then forks workers.
local({
  file <- Sys.getenv("VALVE_FILE")
  if (!requireNamespace("plumber", quietly = TRUE) || !requireNamespace("httpuv", quietly = TRUE)) {
    message("valve: the R package 'plumber' is not installed (library paths: ",
            paste(.libPaths(), collapse = ", "), ")")
    quit(save = "no", status = 78)
  }
  tryCatch(dyn.load(Sys.getenv("VALVE_PRELOAD_HELPER")), error = function(e) {
    message("valve: cannot load the preload helper: ", conditionMessage(e))
    quit(save = "no", status = 70)
  })
  envir <- new.env(parent = globalenv())
  router <- tryCatch(plumber::pr(file, envir = envir), error = function(e) {
    message("valve: cannot load ", file, ": ", conditionMessage(e))
    quit(save = "no", status = 1)
  })
  # As worker.R does: the API's OpenAPI spec for valve's request checks (kWriteOpenApiSpecR).
)R";
constexpr const char *kTemplateScriptForks = R"R(  hook <- get0("valve_post_fork", envir = envir, mode = "function")
  # Answers the readiness probe's path in-process, without a connection (plumber answers 404): R
  # compiles plumber's request path here once, not in every worker as it first serves.
  warm_up <- function() for (i in 1:2) tryCatch({
    req <- new.env()
    req$REQUEST_METHOD <- "GET"
    req$PATH_INFO <- "/__valve/ready"
    req$QUERY_STRING <- ""
    req$SCRIPT_NAME <- ""
    req$SERVER_NAME <- "valve"
    req$SERVER_PORT <- "0"
    req$REMOTE_ADDR <- "127.0.0.1"
    req$REMOTE_PORT <- "0"
    req$HTTP_HOST <- "valve"
    req$HTTP_USER_AGENT <- "valve-probe"
    req$HEADERS <- c(host = "valve", "user-agent" = "valve-probe")
    req$rook.input <- httpuv:::NullInputStream$new()
    req$rook.errors <- httpuv:::ErrorStream$new()
    router$call(req)
  }, error = function(e) NULL)
  warm_up()
  mask <- strtoi("077", 8L)
  got <- .C("valve_template_serve", ctl = 3L, lifeline = 4L, id = 0L,
            socket = strrep(" ", 4096L), seed = 0L)
  if (got$id == 0L) quit(save = "no", status = 0)  # valve closed the control socket
  # Forked from the template: a worker (id > 0), or a spare (id -1) that becomes one later.
  Sys.unsetenv(c("VALVE_TEMPLATE", "VALVE_SPARE_DIR", "VALVE_PRELOAD_SPARES"))
  if (exists(".Random.seed", envir = globalenv(), inherits = FALSE))
    rm(".Random.seed", envir = globalenv())
  set.seed(got$seed)
  if (!is.null(hook)) tryCatch(hook(), error = function(e) {
    message("valve: valve_post_fork() failed: ", conditionMessage(e))
    quit(save = "no", status = 1)
  })
  httpuv::startPipeServer(got$socket, mask, router)
  if (got$id < 0L) {
    # A spare, forked ahead of demand: it answers two probes of its own (paying for its
    # copy-on-write faults now), then waits to be handed a worker's id and address.
    if (.C("valve_spare_warm_up", started = 0L)$started == 1L)
      while (.C("valve_spare_warmed", done = 0L)$done == 0L) httpuv::service(5)
    got <- .C("valve_spare_wait", id = 0L, socket = strrep(" ", 4096L))
    if (got$id <= 0L) quit(save = "no", status = 0)  # the template is gone
  }
  Sys.setenv(VALVE_WORKER_ID = as.character(got$id), VALVE_SOCKET = got$socket)
  repeat httpuv::service(1000)
})
)R";

// Readable by all: the directory (0700) keeps others out, and workers of --user must read them.
bool write_file(const std::string &path, const void *data, size_t size) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  const char *p = static_cast<const char *>(data);
  while (size > 0) {
    ssize_t n = write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(fd);
      return false;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return close(fd) == 0;
}

}  // namespace

// One template process and its control socket.
class Template {
 public:
  enum class State { starting, ready, ending, exited };

  struct Pending {
    Worker *worker = nullptr;
    SpawnSpec spec;  // the plain launch, should the fork fail
    int out = -1, err = -1;
    bool sent = false;
    void close_pipes() {
      if (out >= 0) close(out);
      if (err >= 0) close(err);
      out = err = -1;
    }
  };

  Template(Preloader &owner, uint64_t generation, SpawnSpec spec, unsigned deaths, size_t spares)
      : wanted_spares_(spares),
        told_spares_(spares),
        owner_(owner),
        pool_(owner.owner()),
        generation_(generation),
        spec_(std::move(spec)),
        deaths_(deaths),
        startup_timer_(pool_.context().loop(),
                       [this] {
                         if (state_ != State::starting) return;
                         pool_.context().log().warn("{} did not load the API within {} s", label(),
                                                    format_seconds(pool_.config().startup_timeout));
                         signal_group(pid_, SIGKILL);
                       }),
        kill_timer_(pool_.context().loop(), [this] {
          if (state_ == State::ending) signal_group(pid_, SIGKILL);
        }) {}

  ~Template() {
    close_channel();
    if (exit_poll_) close_handle(exit_poll_);
    if (pidfd_ >= 0) close(pidfd_);
    for (auto &[id, p] : pending_) p.close_pipes();
  }
  Template(const Template &) = delete;
  Template &operator=(const Template &) = delete;

  uint64_t generation() const { return generation_; }
  pid_t pid() const { return pid_; }
  State state() const { return state_; }
  unsigned deaths() const { return deaths_; }
  uint64_t forks() const { return forks_; }
  // {"pid":P,"parked":B} for each spare, oldest first
  Json spares_json() const {
    Json out = Json::array();
    for (const Spare &s : spares_) {
      Json &spare = out.emplace_back(Json::object());
      spare["pid"] = s.pid;
      spare["parked"] = s.parked;
    }
    return out;
  }
  const SpawnSpec &spec() const { return spec_; }
  bool was_ready() const { return ready_ms_ != 0; }
  bool ended() const { return ended_; }  // valve ended it
  std::map<uint64_t, Pending> &pending() { return pending_; }
  const char *state_name() const {
    switch (state_) {
      case State::starting:
        return "starting";
      case State::ready:
        return "ready";
      case State::ending:
        return "stopping";
      case State::exited:
        return "exited";
    }
    return "unknown";
  }
  std::string label() const {
    return fmt::format("template for generation {} (pid {})", generation_, pid_);
  }
  std::string tail() const {
    std::string out;
    for (const auto &l : tail_) out += "\n  " + l;
    return out;
  }

  // Spawns the template; 0 or a negative errno.
  int start() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
    SpawnSpec spec = spec_;
    spec.keep_fds = {sv[1], owner_.lifeline_fd()};  // fds 3 and 4 in template.R
    // A temporary directory of its own, as a worker has (spares use it until they become one).
    std::string base = temp_base(spec.env);
    if (int rc =
            tmpdir_.make(base, fmt::format("valve-template-{}-{}", getpid(), generation_), spec.as);
        rc != 0)
      pool_.context().log().warn(
          "the template for generation {}: cannot make its temporary directory in {}: {}",
          generation_, base, uv_message(rc));
    tmpdir_.give_to(spec.env);
    Spawned child;
    int rc = spawn_process(spec, &child);
    close(sv[1]);
    if (rc != 0) {
      close(sv[0]);
      return rc;
    }
    ctl_ = sv[0];
    fcntl(ctl_, F_SETFL, fcntl(ctl_, F_GETFL) | O_NONBLOCK);
    pid_ = child.pid;
    pidfd_ = child.pidfd;
    started_ms_ = monotonic_ms();
    uv_loop_t *loop = pool_.context().loop();
    out_ = std::make_unique<LineReader>(loop, child.out_fd,
                                        [this](std::string_view l) { on_line(false, l); });
    err_ = std::make_unique<LineReader>(loop, child.err_fd,
                                        [this](std::string_view l) { on_line(true, l); });
    ctl_poll_ = new_handle<uv_poll_t>(this);
    uv_poll_init(loop, ctl_poll_, ctl_);
    uv_poll_start(ctl_poll_, UV_READABLE, [](uv_poll_t *p, int, int) {
      if (auto *self = static_cast<Template *>(p->data)) self->on_readable();
    });
    exit_poll_ = new_handle<uv_poll_t>(this);
    uv_poll_init(loop, exit_poll_, pidfd_);
    uv_poll_start(exit_poll_, UV_READABLE, [](uv_poll_t *p, int, int) {
      if (auto *self = static_cast<Template *>(p->data)) self->check_exit();
    });
    startup_timer_.start(pool_.config().startup_timeout);
    pool_.context().stats().template_launches++;
    pool_.context().log().info("{} launched: loading {}", label(), pool_.api_file());
    return 0;
  }

  // Keep n spares from now on (the template was started with `spares` in its environment).
  void want_spares(size_t n) {
    wanted_spares_ = n;
    if (state_ != State::ready || n == told_spares_ || ctl_ < 0) return;
    std::string text = fmt::format("spares {}", n);
    if (send(ctl_, text.data(), text.size(), MSG_DONTWAIT | MSG_NOSIGNAL) >= 0) told_spares_ = n;
  }

  void request(Worker &w, const SpawnSpec &spec) {
    Pending &p = pending_[w.id()];
    p.worker = &w;
    p.spec = spec;
    if (state_ == State::ready) send_fork(w.id(), p);
  }

  void cancel(uint64_t worker_id) {
    auto it = pending_.find(worker_id);
    if (it == pending_.end()) return;
    it->second.close_pipes();
    pending_.erase(it);  // a fork already under way is killed when it is reported
  }

  // Closes the control socket (the template then quits), SIGTERM, SIGKILL after kill-timeout.
  void end(std::string_view why) {
    if (state_ == State::ending || state_ == State::exited) return;
    state_ = State::ending;
    ended_ = true;
    startup_timer_.stop();
    pool_.context().log().info("stopping {}: {}", label(), why);
    close_channel();
    signal_group(pid_, SIGTERM);
    end_spares();
    kill_timer_.start(pool_.config().kill_timeout);
  }

  void check_exit() {
    int status = 0;
    if (state_ != State::exited && waitpid(pid_, &status, WNOHANG) == pid_) on_exit(status);
  }

  void on_exit(int status) {
    if (state_ == State::exited) return;
    bool expected = state_ == State::ending;
    state_ = State::exited;
    startup_timer_.stop();
    kill_timer_.stop();
    close_channel();
    if (exit_poll_) close_handle(exit_poll_);
    signal_group(pid_, SIGKILL);  // what it started itself (its workers have groups of their own)
    end_spares();
    pool_.context().log().write(
        expected ? LogLevel::info : LogLevel::warn,
        fmt::format("{} {}{}", label(), describe_exit(status), expected ? "" : " unexpectedly"));
    tmpdir_.remove_later(pool_.context());
    owner_.on_template_exit(*this, status);  // may destroy this template: nothing after it
  }

 private:
  void forget_spare(pid_t pid) {
    std::erase_if(spares_, [pid](const Spare &s) { return s.pid == pid; });
  }

  void end_spares() {
    for (const Spare &s : spares_) owner_.end_spare(s.pid);
    spares_.clear();
  }

  void close_channel() {
    if (ctl_poll_) close_handle(ctl_poll_);
    if (ctl_ >= 0) close(ctl_);
    ctl_ = -1;
  }

  void on_line(bool is_stderr, std::string_view line) {
    pool_.context().log().info("{}{}: {}", label(), is_stderr ? "" : " [stdout]", line);
    tail_.emplace_back(line);
    if (tail_.size() > kOutputTailLines) tail_.pop_front();
  }

  void send_fork(uint64_t id, Pending &p) {
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    int rc = 0;
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      rc = errno;
    } else {
      // "fork ID SOCKET", then on a line of its own the worker's temporary directory, if made.
      std::string text = fmt::format("fork {} {}", id, p.worker->socket_path());
      if (!p.worker->tmpdir().empty()) text += "\n" + p.worker->tmpdir();
      iovec iov{text.data(), text.size()};
      union {
        char space[CMSG_SPACE(2 * sizeof(int))];
        cmsghdr align;
      } control{};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.space;
      msg.msg_controllen = sizeof control.space;
      cmsghdr *c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(2 * sizeof(int));
      int fds[2] = {out[1], err[1]};
      std::memcpy(CMSG_DATA(c), fds, sizeof fds);
      if (sendmsg(ctl_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) rc = errno;
    }
    for (int fd : {out[1], err[1]}) {
      if (fd >= 0) close(fd);
    }
    if (rc != 0) {
      for (int fd : {out[0], err[0]}) {
        if (fd >= 0) close(fd);
      }
      fail_later(id, fmt::format("{} could not be asked to fork it: {}", label(), strerror(rc)));
      return;
    }
    p.out = out[0];
    p.err = err[0];
    p.sent = true;
  }

  // The worker is launched plainly instead, from the loop (never from inside Preloader::fork).
  void fail_later(uint64_t id, std::string why) {
    calls_.post([this, id, why = std::move(why)] {
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      Pending p = std::move(it->second);
      pending_.erase(it);
      p.close_pipes();
      pool_.context().stats().fork_fallbacks++;
      p.worker->on_fork_failed(p.spec, why);
    });
  }

  void on_readable() {
    char buf[512];
    for (;;) {
      ssize_t n = recv(ctl_, buf, sizeof buf - 1, MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      if (n <= 0) {  // the template closed its end: its exit follows through the pidfd
        close_channel();
        return;
      }
      buf[n] = 0;
      on_message(buf);  // a template is deleted after the callback, never inside it
      if (ctl_ < 0) return;
    }
  }

  void on_message(const char *msg) {
    int id = 0, pid = 0, status = 0;
    if (sscanf(msg, "ready %d", &pid) == 1) {
      if (state_ != State::starting) return;
      state_ = State::ready;
      ready_ms_ = monotonic_ms();
      startup_timer_.stop();
      pool_.context().log().info("{} ready after {} ms: workers are forked from it", label(),
                                 ready_ms_ - started_ms_);
      for (auto &[wid, p] : pending_) {
        if (!p.sent) send_fork(wid, p);
      }
      want_spares(wanted_spares_);
    } else if (sscanf(msg, "spare %d", &pid) == 1) {
      spares_.push_back({pid, false});
    } else if (sscanf(msg, "dropped %d", &pid) == 1) {
      forget_spare(pid);
    } else if (sscanf(msg, "parked %d", &pid) == 1) {
      for (Spare &s : spares_) {
        if (s.pid == pid) s.parked = true;
      }
    } else if (sscanf(msg, "lost %d", &pid) == 1) {
      forget_spare(pid);
      pool_.context().log().warn(
          "{}: its spare (pid {}) died before it was needed; workers are forked on "
          "demand from now on",
          label(), pid);
    } else if (sscanf(msg, "forked %d %d", &id, &pid) == 2) {
      forget_spare(pid);
      auto it = pending_.find(static_cast<uint64_t>(id));
      if (it == pending_.end()) {  // cancelled meanwhile
        signal_group(pid, SIGKILL);
        return;
      }
      Pending p = std::move(it->second);
      pending_.erase(it);
      ++forks_;
      deaths_ = 0;
      pool_.context().stats().forks++;
      Spawned child;
      child.pid = pid;
      child.pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
      if (child.pidfd >= 0) fcntl(child.pidfd, F_SETFD, FD_CLOEXEC);
      // Without a pidfd it already ended and was reaped: the template's "exit" report follows.
      child.out_fd = p.out;
      child.err_fd = p.err;
      p.worker->on_forked(child);
    } else if (sscanf(msg, "failed %d %d", &id, &status) == 2) {
      auto it = pending_.find(static_cast<uint64_t>(id));
      if (it == pending_.end()) return;
      Pending p = std::move(it->second);
      pending_.erase(it);
      p.close_pipes();
      pool_.context().stats().fork_fallbacks++;
      p.worker->on_fork_failed(p.spec,
                               fmt::format("{} could not fork it: {}", label(), strerror(status)));
    } else if (sscanf(msg, "exit %d %d %d", &id, &pid, &status) == 3) {
      Worker *w = pool_.find_pid(pid);
      if (w && w->forked() && (id == 0 || w->id() == static_cast<uint64_t>(id))) w->on_exit(status);
    } else {
      pool_.context().log().warn("{} sent an unknown message: {}", label(), msg);
    }
  }

  size_t wanted_spares_;  // what the pool last asked for
  size_t told_spares_;    // what the template was last told
  Preloader &owner_;
  Preloader::Owner &pool_;
  uint64_t generation_;
  SpawnSpec spec_;
  unsigned deaths_;  // earlier templates of this generation that died, with no fork since
  pid_t pid_ = -1;
  int pidfd_ = -1;
  int ctl_ = -1;
  State state_ = State::starting;
  uint64_t started_ms_ = 0;
  uint64_t ready_ms_ = 0;
  uint64_t forks_ = 0;
  TempDir tmpdir_;  // its own; the forked workers have theirs
  struct Spare {
    pid_t pid;
    bool parked;  // warm and waiting
  };
  std::vector<Spare> spares_;  // forked, oldest first
  bool ended_ = false;
  uv_poll_t *ctl_poll_ = nullptr;
  uv_poll_t *exit_poll_ = nullptr;
  std::unique_ptr<LineReader> out_, err_;
  std::deque<std::string> tail_;
  std::map<uint64_t, Pending> pending_;
  Timer startup_timer_;
  Timer kill_timer_;
  DeferredCalls calls_{pool_.context().deferred()};
};

Preloader::Preloader(Owner &owner) : pool_(owner) {
  if (pipe2(lifeline_, O_CLOEXEC) != 0) lifeline_[0] = lifeline_[1] = -1;
}

Preloader::~Preloader() {
  templates_.clear();
  for (int fd : lifeline_) {
    if (fd >= 0) close(fd);
  }
}

bool Preloader::write_files(std::string *why) {
  int probe = static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0));
  if (probe < 0) {
    *why = "this kernel has no pidfds (Linux 5.3 or later), needed to watch forked workers";
    return false;
  }
  close(probe);
  if (lifeline_[0] < 0) {
    *why = fmt::format("cannot make the lifeline pipe: {}", strerror(errno));
    return false;
  }
  const std::string &dir = pool_.context().runtime_dir();
  script_path_ = fmt::format("{}/template-{}.R", dir, pool_.serial());
  helper_path_ = fmt::format("{}/preload-{}.so", dir, pool_.serial());
  std::string script = std::string(kTemplateScript) + kWriteOpenApiSpecR + kTemplateScriptForks;
  if (!write_file(script_path_, script.data(), script.size()) ||
      !write_file(helper_path_, kPreloadHelper, kPreloadHelperSize)) {
    *why = fmt::format("cannot write the template's files in {}: {}", dir, strerror(errno));
    return false;
  }
  return true;
}

void Preloader::remove_files() {
  if (!script_path_.empty()) unlink(script_path_.c_str());
  if (!helper_path_.empty()) unlink(helper_path_.c_str());
}

Template *Preloader::find(uint64_t generation) {
  for (auto &t : templates_) {
    if (t->generation() == generation &&
        (t->state() == Template::State::starting || t->state() == Template::State::ready))
      return t.get();
  }
  return nullptr;
}

void Preloader::set_spares(size_t n) {
  spares_ = n;
  if (Template *t = find(pool_.generation())) t->want_spares(n);
}

bool Preloader::fork(Worker &w, const SpawnSpec &spec) {
  if (terminating_) return false;
  if (!checked_) {
    checked_ = true;
    std::string why;
    usable_ = write_files(&why);
    if (!usable_) pool_.context().log().warn("preload: workers are launched plainly: {}", why);
  }
  if (!usable_ || plain_generations_.count(w.generation())) return false;
  Template *t = find(w.generation());
  if (!t) {
    // The template runs as the worker would (same program, environment, directory), but runs
    // template.R and is no worker: it has neither a worker id nor a socket.
    SpawnSpec tspec = spec;
    if (!tspec.argv.empty()) tspec.argv.back() = script_path_;
    unset_variable(tspec.env, "VALVE_WORKER_ID");
    unset_variable(tspec.env, "VALVE_SOCKET");
    set_variable(tspec.env, "VALVE_TEMPLATE", "1");
    set_variable(tspec.env, "VALVE_PRELOAD_HELPER", helper_path_);
    set_variable(tspec.env, "VALVE_SPARE_DIR", pool_.context().runtime_dir());
    set_variable(tspec.env, "VALVE_PRELOAD_SPARES", std::to_string(spares_));
    auto fresh = std::make_unique<Template>(*this, w.generation(), std::move(tspec), 0, spares_);
    if (int rc = fresh->start(); rc != 0) {
      plain_generations_.insert(w.generation());
      pool_.context().stats().fork_fallbacks++;
      pool_.context().log().warn(
          "preload: generation {} launches workers plainly: cannot launch its template: {}",
          w.generation(), uv_message(rc));
      return false;
    }
    templates_.push_back(std::move(fresh));
    t = templates_.back().get();
  }
  t->request(w, spec);
  return true;
}

void Preloader::cancel(Worker &w) {
  for (auto &t : templates_) t->cancel(w.id());
}

bool Preloader::on_reaped(pid_t pid, int wait_status) {
  for (auto &t : templates_) {
    if (t->pid() == pid && t->state() != Template::State::exited) {
      t->on_exit(wait_status);
      return true;
    }
  }
  return false;
}

void Preloader::launch_plainly(Template &t, std::string_view why) {
  auto waiting = std::move(t.pending());
  t.pending().clear();
  for (auto &[id, p] : waiting) {
    p.close_pipes();
    pool_.context().stats().fork_fallbacks++;
    p.worker->on_fork_failed(p.spec, why);
  }
}

void Preloader::fall_back(Template &t, std::string why) {
  plain_generations_.insert(t.generation());
  pool_.context().log().warn("preload: generation {} launches workers plainly: {}", t.generation(),
                             why);
  launch_plainly(t, "its template is not available");
}

void Preloader::on_template_exit(Template &t, int wait_status) {
  uint64_t gen = t.generation();
  if (terminating_ || t.ended()) {
    launch_plainly(t, "its template was stopped");
  } else if (!t.was_ready()) {
    fall_back(t, fmt::format("the {} {} before it loaded the API. Its last output:{}", t.label(),
                             describe_exit(wait_status), t.tail()));
  } else if (gen == pool_.generation() || !t.pending().empty()) {
    unsigned deaths = t.deaths() + 1;
    if (deaths >= kMaxDeaths) {
      fall_back(t, fmt::format("the template for generation {} died {} times in a row without "
                               "forking a worker in between",
                               gen, deaths));
    } else {
      SpawnSpec spec = t.spec();
      set_variable(spec.env, "VALVE_PRELOAD_SPARES", std::to_string(spares_));
      auto fresh = std::make_unique<Template>(*this, gen, std::move(spec), deaths, spares_);
      if (int rc = fresh->start(); rc != 0) {
        fall_back(t, fmt::format("cannot relaunch the template for generation {}: {}", gen,
                                 uv_message(rc)));
      } else {
        pool_.context().log().info("preload: relaunching the template for generation {}", gen);
        for (auto &[id, p] : t.pending()) {
          p.close_pipes();  // sent to the dead template: asked again of the new one
          fresh->request(*p.worker, p.spec);
        }
        t.pending().clear();
        templates_.push_back(std::move(fresh));
      }
    }
  }
  pool_.context().defer_erase(templates_, &t);
  pool_.on_template_exit();
}

// A killed spare is reaped by its template, or by valve (a subreaper) once the template is gone
// too. valve waits for that (or 3 s, when it is not the subreaper), so that no spare outlives
// valvectl as a zombie (in a container without an init, nothing would reap it).
struct Preloader::EndingSpare {
  EndingSpare(uv_loop_t *loop, pid_t p, std::function<void()> cb)
      : pid(p), timer(loop, std::move(cb)) {}
  pid_t pid;
  int checks = 0;
  Timer timer;
};

void Preloader::end_spare(pid_t pid) {
  constexpr double kInterval = 0.01;
  signal_group(pid, SIGKILL);
  auto &e = ending_spares_.emplace_back(std::make_unique<EndingSpare>(
      pool_.context().loop(), pid, [this, pid] { check_spare(pid); }));
  e->timer.start(kInterval, kInterval);
}

void Preloader::check_spare(pid_t pid) {
  constexpr int kChecks = 300;
  for (auto &e : ending_spares_) {
    if (e->pid != pid) continue;
    int status;
    waitpid(pid, &status, WNOHANG);  // valve's child once its template is gone
    if ((kill(pid, 0) == 0 || errno != ESRCH) && ++e->checks < kChecks) return;
    e->timer.stop();
    pool_.context().defer_erase(ending_spares_, e.get());
    pool_.on_template_exit();
    return;
  }
}

void Preloader::keep_only(uint64_t generation) {
  // A generation number can come again (a failed reload's is reused by the next reload).
  std::erase_if(plain_generations_, [generation](uint64_t g) { return g != generation; });
  for (auto &t : templates_) {
    if (t->generation() != generation) t->end("its generation no longer serves");
  }
}

void Preloader::terminate() {
  terminating_ = true;
  for (auto &t : templates_) t->end("shutting down");
}

bool Preloader::all_exited() const {
  if (!ending_spares_.empty()) return false;
  for (const auto &t : templates_) {
    if (t->state() != Template::State::exited) return false;
  }
  return true;
}

Json Preloader::json() const {
  Json templates = Json::array();
  for (const auto &t : templates_) {
    Json &entry = templates.emplace_back(Json::object());
    entry["generation"] = t->generation();
    entry["pid"] = t->pid();
    entry["state"] = t->state_name();
    entry["forks"] = t->forks();
    entry["spares"] = t->spares_json();
  }
  Json doc = Json::object();
  doc["templates"] = std::move(templates);
  doc["plain_generations"] = plain_generations_;
  return doc;
}

}  // namespace valve
