// Each worker's (and each preload template's) own temporary directory: made under the TMPDIR it
// would have had, given to it as TMPDIR (so R's tempdir() and every other program's temporary files
// go there), and removed with all in it once the process has exited, however it ended. R removes
// its tempdir() only when it quits normally; a worker ended by a signal would leave it forever.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "process.hpp"

namespace valve {

class Context;

// The directory a process with this environment puts its temporary files in: its TMPDIR, else /tmp.
std::string temp_base(const std::vector<std::string> &env);

// Removes path and everything under it without following a symbolic link anywhere: every step is
// relative to a directory descriptor opened with O_NOFOLLOW, so a link planted (or swapped in
// meanwhile) by the process that owned the tree is removed itself, never what it points to. Any
// depth is removed with a bounded number of descriptors (deeper subtrees are moved up first).
// With `expected` (st_dev, st_ino), path itself is removed only if it is still that directory.
// Returns 0, or the first negative errno met (what could be removed is removed).
int remove_tree(const std::string &path,
                std::optional<std::pair<dev_t, ino_t>> expected = std::nullopt);

class TempDir {
 public:
  TempDir() = default;
  ~TempDir();  // removes a directory still there at once (its process never ran, or valve ends)
  TempDir(const TempDir &) = delete;
  TempDir &operator=(const TempDir &) = delete;

  // Makes BASE/PREFIX-XXXXXX, mode 0700, owned by `as` when set (a --user worker writes there);
  // 0 or a negative errno.
  int make(const std::string &base, std::string_view prefix,
           const std::optional<Credentials> &as = std::nullopt);
  // Empty until made.
  const std::string &path() const { return path_; }
  // Sets TMPDIR in env to it, if it was made.
  void give_to(std::vector<std::string> &env) const;
  // Removes it (and all in it) on libuv's thread pool, off the loop: a worker may leave gigabytes.
  // A failure is logged. The loop runs until it is done.
  void remove_later(Context &ctx);

 private:
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

}  // namespace valve
