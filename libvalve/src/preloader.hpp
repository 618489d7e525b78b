// Preloaded spawning (--preload): one R process per generation of the app, the template, loads
// plumber and the API file once, then forks each worker on valve's request. A forked worker serves
// in milliseconds instead of the half second R needs to start and load plumber, and shares the
// template's memory (the API, its packages, a model it loaded) copy-on-write.
//
// How it works, and why:
// - The template is spawned like a worker (spawn_process, from the worker's own SpawnSpec: same
//   Rscript, environment, directory), running template.R instead of worker.R. It loads the API
//   with plumber::pr() and starts no server (forking a process whose libuv loop runs is unsafe).
// - It then calls, through .C(), a small C helper (preload_helper.c, built with libvalve and
//   written next to template.R) that waits on a control socket from valve: "fork ID PATH" (and the
//   worker's temporary directory) with the worker's stdout and stderr pipes passed by SCM_RIGHTS.
//   The helper forks; the child takes its own process group, the pipes as fds 1 and 2, that
//   directory as TMPDIR with its R tempdir() inside, and a random seed of its own, returns into R,
//   runs the API's valve_post_fork() hook and serves on PATH. valve, not the template, removes the
//   directory once the worker has exited (tempdir.hpp): it sees every worker's end, also after the
//   template died, and a --user worker's tree is removed with valve's rights, following no link. R alone cannot
//   do this (parallel::mcfork gives no process group, no fd-level redirection, no exit status).
// - Forked workers are the template's children, not valve's: valve sees them end through a pidfd
//   (which works for any process) and gets their exit status from the template, which reaps them
//   and reports "exit ID PID STATUS". If the template is gone, a worker is reparented to valvectl
//   (a child subreaper) and reaped by it as any worker is.
// - A worker outlives its template (a template's death must not fail requests in flight), so it
//   cannot use PR_SET_PDEATHSIG. Instead it watches a lifeline pipe whose write end only valve
//   holds: when valve dies, however it dies, the read returns 0 and the worker kills its group.
//   The template itself is valve's child and gets PR_SET_PDEATHSIG as a worker does.
// - A template that fails to start, fails to fork, or dies three times in a row before it has
//   forked a worker, turns its generation back to plain launches, with a warning saying so. One
//   that dies after serving is relaunched. A reload starts a template for the new generation first
//   (the new generation's workers wait for it); once the reload is over, only the serving
//   generation's template is kept.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace valve {

class Context;
class Worker;
struct Config;
class Template;
struct SpawnSpec;

class Preloader {
 public:
  // The pool whose workers it forks.
  class Owner {
   public:
    virtual Context &context() = 0;
    virtual const Config &config() const = 0;
    virtual uint64_t serial() const = 0;      // names its files in the runtime directory
    virtual uint64_t generation() const = 0;  // the one serving
    virtual const std::string &api_file() const = 0;
    // The worker with this process ID, if any.
    virtual Worker *find_pid(int pid) = 0;
    // A template ended: workers waiting for one may launch plainly now.
    virtual void on_template_exit() = 0;

   protected:
    ~Owner() = default;
  };

  explicit Preloader(Owner &owner);
  ~Preloader();
  Preloader(const Preloader &) = delete;
  Preloader &operator=(const Preloader &) = delete;

  // Asks the template of w's generation to fork w, starting that template if need be (from the
  // plain launch's spec). Then w.on_forked() or w.on_fork_failed() follows, never from inside
  // fork(). False when w's generation launches plainly (its template failed): launch it so.
  bool fork(Worker &w, const SpawnSpec &spec);
  // The spares the serving generation's template keeps from now on (--preload-spares, or what
  // recent demand asks for).
  void set_spares(size_t n);
  // w no longer wants the fork it asked for (it was stopped first).
  void cancel(Worker &w);
  // valve reaped a child (SIGCHLD): true if it was a template.
  bool on_reaped(pid_t pid, int wait_status);
  // Ends the templates of every other generation (a reload is over, or was abandoned).
  void keep_only(uint64_t generation);
  // Shutting down: ends every template.
  void terminate();
  bool all_exited() const;
  nlohmann::ordered_json json() const;  // its templates and plain generations (the status)
  // Removes template.R and the helper from the runtime directory.
  void remove_files();

  // ---- from templates
  Owner &owner() { return pool_; }
  void on_template_exit(Template &t, int wait_status);
  // Kills a spare of a template that ends or died (it serves nothing) and waits until it is
  // reaped before the pool counts as exited.
  void end_spare(pid_t pid);
  int lifeline_fd() const { return lifeline_[0]; }
  const std::string &script_path() const { return script_path_; }
  const std::string &helper_path() const { return helper_path_; }

 private:
  Template *find(uint64_t generation);
  // The workers waiting for t are launched plainly.
  void launch_plainly(Template &t, std::string_view why);
  // t's generation turns to plain launches, saying why; so do the workers waiting for t.
  void fall_back(Template &t, std::string why);
  bool write_files(std::string *why);
  void check_spare(pid_t pid);

  Owner &pool_;
  std::list<std::unique_ptr<Template>> templates_;
  std::set<uint64_t> plain_generations_;
  int lifeline_[2] = {-1, -1};  // read end for the workers, write end kept by valve alone
  bool checked_ = false;        // pidfds and the files: checked once
  bool usable_ = false;
  std::string script_path_;
  std::string helper_path_;
  bool terminating_ = false;
  size_t spares_ = 0;  // what set_spares() last said
  struct EndingSpare;
  std::list<std::unique_ptr<EndingSpare>> ending_spares_;
};

}  // namespace valve
