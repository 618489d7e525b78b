#include "tempdir.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "context.hpp"
#include "log.hpp"
#include "sandbox.hpp"

namespace valve {

namespace {

// Directories held open at once by one removal; a deeper subtree is moved up to the top first.
constexpr int kMaxDepth = 32;
// Passes over one directory: a pass misses what was added or moved into it meanwhile.
constexpr int kMaxPasses = 1000;

bool is_dot(const char *name) {
  return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

class Remover {
 public:
  explicit Remover(int top) : top_(top) {}
  int error() const { return error_; }

  // Removes everything in the directory open at dir (depth: how many are open above it).
  void empty(int dir, int depth) {
    for (int pass = 0; pass < kMaxPasses; ++pass) {
      // A description of its own (a dup would share the read position between passes); "." is
      // never a link.
      int fd = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return note(errno);
      DIR *d = fdopendir(fd);
      if (!d) {
        note(errno);
        close(fd);
        return;
      }
      bool any = false, progress = false;
      while (dirent *e = readdir(d)) {
        if (is_dot(e->d_name)) continue;
        any = true;
        progress |= remove_entry(dir, e->d_name, e->d_type, depth);
      }
      closedir(d);
      if (!any || !progress) return;
    }
  }

 private:
  void note(int e) {
    if (error_ == 0 && e != ENOENT) error_ = -e;
  }

  // Removes one entry of the directory open at dir; true if it is gone.
  bool remove_entry(int dir, const char *name, unsigned char type, int depth) {
    bool directory = type == DT_DIR;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) directory = S_ISDIR(st.st_mode);
    }
    if (!directory) {
      if (unlinkat(dir, name, 0) == 0) return true;
      if (errno != EISDIR) {  // EISDIR: a directory was put there meanwhile
        note(errno);
        return false;
      }
    }
    if (depth >= kMaxDepth) {
      // Moved up to the top, where a later pass takes it with fewer descriptors open.
      for (int attempt = 0; attempt < 100; ++attempt) {
        std::string moved = fmt::format(".valve-deep-{}", next_moved_++);
        if (renameat2(dir, name, top_, moved.c_str(), RENAME_NOREPLACE) == 0) return true;
        if (errno != EEXIST) break;
      }
      note(errno);
      return false;
    }
    int sub = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      // ELOOP, ENOTDIR: a link or a file was put there meanwhile; the name goes, not its target.
      if ((errno == ELOOP || errno == ENOTDIR) && unlinkat(dir, name, 0) == 0) return true;
      note(errno);
      return false;
    }
    empty(sub, depth + 1);
    close(sub);
    if (unlinkat(dir, name, AT_REMOVEDIR) == 0) return true;
    note(errno);
    return false;
  }

  int top_;
  int error_ = 0;
  unsigned long next_moved_ = 0;
};

}  // namespace

std::string temp_base(const std::vector<std::string> &env) {
  std::string base = "/tmp";
  for (const std::string &entry : env) {
    if (entry.starts_with("TMPDIR=") && entry.size() > 7) base = entry.substr(7);
  }
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  return base;
}

int remove_tree(const std::string &path, std::optional<std::pair<dev_t, ino_t>> expected) {
  size_t slash = path.find_last_of('/');
  std::string parent_path = slash == std::string::npos ? "." : path.substr(0, slash);
  if (parent_path.empty()) parent_path = "/";
  std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || is_dot(name.c_str())) return -EINVAL;
  // The parent is the operator's TMPDIR: it may be a link. Below it, nothing is followed.
  int parent = open(parent_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (parent < 0) return errno == ENOENT ? 0 : -errno;
  int top = openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (top < 0) {
    int e = errno;
    int rc = e == ENOENT ? 0 : -e;
    // Not a directory now: without an identity to keep, the name itself goes (never a target).
    if ((e == ELOOP || e == ENOTDIR) && !expected)
      rc = unlinkat(parent, name.c_str(), 0) == 0 ? 0 : -errno;
    else if (e == ELOOP || e == ENOTDIR)
      rc = -ESTALE;  // something else stands where the directory was made: left alone
    close(parent);
    return rc;
  }
  struct stat st;
  if (expected &&
      (fstat(top, &st) != 0 || st.st_dev != expected->first || st.st_ino != expected->second)) {
    close(top);
    close(parent);
    return -ESTALE;
  }
  Remover remover(top);
  remover.empty(top, 1);
  close(top);
  int rc = unlinkat(parent, name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : -errno;
  close(parent);
  if (rc != 0 && remover.error() != 0) rc = remover.error();
  return rc;
}

TempDir::~TempDir() {
  if (!path_.empty()) remove_tree(path_, std::pair{dev_, ino_});
}

int TempDir::make(const std::string &base, std::string_view prefix,
                  const std::optional<Credentials> &as) {
  std::string dir = base;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!dir.starts_with('/')) {  // the worker starts elsewhere: what valve means is absolute
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return -errno;
    dir = fmt::format("{}/{}", cwd, dir);
  }
  std::string path = fmt::format("{}/{}-XXXXXX", dir, prefix);
  if (!mkdtemp(path.data())) return -errno;
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  struct stat st;
  int rc = fd < 0 ? -errno : 0;
  if (rc == 0 && as && fchown(fd, as->uid, as->gid) != 0) rc = -errno;
  if (rc == 0 && fstat(fd, &st) != 0) rc = -errno;
  if (fd >= 0) close(fd);
  if (rc != 0) {
    rmdir(path.c_str());
    return rc;
  }
  path_ = std::move(path);
  dev_ = st.st_dev;
  ino_ = st.st_ino;
  return 0;
}

void TempDir::give_to(std::vector<std::string> &env) const {
  if (!path_.empty()) set_variable(env, "TMPDIR", path_);
}

void TempDir::remove_later(Context &ctx) {
  if (path_.empty()) return;
  struct Removal {
    uv_work_t req{};
    std::string path;
    std::pair<dev_t, ino_t> identity;
    Logger log;
    int rc = 0;
  };
  auto *removal = new Removal{{}, std::move(path_), {dev_, ino_}, ctx.log()};
  path_.clear();
  removal->req.data = removal;
  int rc = uv_queue_work(
      ctx.loop(), &removal->req,
      [](uv_work_t *req) {
        auto *r = static_cast<Removal *>(req->data);
        r->rc = remove_tree(r->path, r->identity);
      },
      [](uv_work_t *req, int) {
        std::unique_ptr<Removal> r(static_cast<Removal *>(req->data));
        if (r->rc != 0)
          r->log.warn("cannot remove the temporary directory {}: {}", r->path,
                      r->rc == -ESTALE ? "it is no longer the directory valve made"
                                       : std::strerror(-r->rc));
      });
  if (rc != 0) {  // no thread pool: here, then
    std::unique_ptr<Removal> r(removal);
    if (int e = remove_tree(r->path, r->identity); e != 0)
      r->log.warn("cannot remove the temporary directory {}: {}", r->path, std::strerror(-e));
  }
}

}  // namespace valve
