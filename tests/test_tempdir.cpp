// tempdir.hpp: a worker's own temporary directory, and its removal without following a link.
#include "tempdir.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "loop_support.hpp"

namespace {

bool exists(const std::string &path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

void write_file(const std::string &path, const std::string &text) {
  std::ofstream(path) << text;
  REQUIRE(exists(path));
}

// A directory of the test's own, removed (by rm, not by what is tested) when it ends.
struct Scratch {
  std::string dir;
  Scratch() {
    char templ[] = "/tmp/valve-unit-tempdir-XXXXXX";
    REQUIRE(mkdtemp(templ) != nullptr);
    dir = templ;
  }
  ~Scratch() { CHECK(system(("rm -rf '" + dir + "'").c_str()) == 0); }
};

}  // namespace

TEST_CASE("tempdir: remove_tree removes the whole tree and follows no link out of it") {
  Scratch s;
  std::string outside = s.dir + "/outside", tree = s.dir + "/tree";
  REQUIRE(mkdir(outside.c_str(), 0700) == 0);
  write_file(outside + "/keep", "not the worker's");
  REQUIRE(mkdir(tree.c_str(), 0700) == 0);
  REQUIRE(mkdir((tree + "/a").c_str(), 0700) == 0);
  REQUIRE(mkdir((tree + "/a/b").c_str(), 0500) == 0);  // not writable: root removes it anyway
  REQUIRE(mkdir((tree + "/Rtmp1").c_str(), 0700) == 0);
  write_file(tree + "/Rtmp1/file", "x");
  write_file(tree + "/a/file", "y");
  // Links a worker could plant: to the directory outside, to a file in it, and dangling.
  REQUIRE(symlink(outside.c_str(), (tree + "/dir-link").c_str()) == 0);
  REQUIRE(symlink(outside.c_str(), (tree + "/a/dir-link").c_str()) == 0);
  REQUIRE(symlink((outside + "/keep").c_str(), (tree + "/a/file-link").c_str()) == 0);
  REQUIRE(symlink("/nonexistent", (tree + "/dangling").c_str()) == 0);
  REQUIRE(mkfifo((tree + "/fifo").c_str(), 0600) == 0);

  CHECK(valve::remove_tree(tree) == 0);
  CHECK_FALSE(exists(tree));
  CHECK(exists(outside + "/keep"));
  std::ifstream kept(outside + "/keep");
  std::string text;
  std::getline(kept, text);
  CHECK(text == "not the worker's");
  CHECK(valve::remove_tree(tree) == 0);  // already gone: nothing to do
}

TEST_CASE("tempdir: remove_tree removes a tree deeper than the descriptors it holds") {
  Scratch s;
  std::string tree = s.dir + "/deep";
  REQUIRE(mkdir(tree.c_str(), 0700) == 0);
  int fd = open(tree.c_str(), O_RDONLY | O_DIRECTORY);
  REQUIRE(fd >= 0);
  for (int i = 0; i < 300; ++i) {  // far past PATH_MAX as a path, so only *at() calls reach it
    REQUIRE(mkdirat(fd, "nested-directory-level", 0700) == 0);
    int next = openat(fd, "nested-directory-level", O_RDONLY | O_DIRECTORY);
    REQUIRE(next >= 0);
    close(fd);
    fd = next;
  }
  REQUIRE(symlinkat(s.dir.c_str(), fd, "up") == 0);
  close(fd);
  CHECK(valve::remove_tree(tree) == 0);
  CHECK_FALSE(exists(tree));
  CHECK(exists(s.dir));
}

TEST_CASE("tempdir: a link put where the directory was is removed itself, or left with identity") {
  Scratch s;
  std::string outside = s.dir + "/outside", name = s.dir + "/valve-worker-1-1-abc";
  REQUIRE(mkdir(outside.c_str(), 0700) == 0);
  write_file(outside + "/keep", "k");
  REQUIRE(symlink(outside.c_str(), name.c_str()) == 0);
  SUBCASE("without an identity, the link goes and its target stays") {
    CHECK(valve::remove_tree(name) == 0);
    CHECK_FALSE(exists(name));
  }
  SUBCASE("with the identity of the directory valve made, nothing is touched") {
    struct stat st;
    REQUIRE(stat(outside.c_str(), &st) == 0);  // even the identity of the link's target
    CHECK(valve::remove_tree(name, std::pair{st.st_dev, st.st_ino}) == -ESTALE);
    CHECK(exists(name));
  }
  CHECK(exists(outside + "/keep"));
}

TEST_CASE(
    "tempdir: a worker's directory is made 0700 for its user, given as TMPDIR, and removed "
    "off the loop") {
  Scratch s;
  test::TestLoop loop;
  valve::Credentials as;
  as.uid = geteuid() == 0 ? 65534 : geteuid();  // nobody, when the test may give it away
  as.gid = geteuid() == 0 ? 65534 : getegid();
  valve::TempDir dir;
  REQUIRE(dir.make(s.dir + "/", "valve-worker-7-3", as) == 0);
  std::string path = dir.path();
  CHECK(path.rfind(s.dir + "/valve-worker-7-3-", 0) == 0);
  struct stat st;
  REQUIRE(lstat(path.c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK((st.st_mode & 07777) == 0700);
  CHECK(st.st_uid == as.uid);
  CHECK(st.st_gid == as.gid);

  std::vector<std::string> env = {"PATH=/usr/bin", "TMPDIR=" + s.dir};
  CHECK(valve::temp_base(env) == s.dir);
  CHECK(valve::temp_base({"PATH=/usr/bin"}) == "/tmp");
  dir.give_to(env);
  CHECK(env == std::vector<std::string>{"PATH=/usr/bin", "TMPDIR=" + path});

  REQUIRE(mkdir((path + "/RtmpAbCdEf").c_str(), 0700) == 0);
  write_file(path + "/RtmpAbCdEf/file", "z");
  REQUIRE(symlink(s.dir.c_str(), (path + "/up").c_str()) == 0);
  dir.remove_later(loop.ctx());
  CHECK(dir.path().empty());
  CHECK(loop.run_until([&] { return !exists(path); }, 10));
  CHECK(exists(s.dir));
  CHECK(loop.logged("cannot remove") == 0);
}

TEST_CASE("tempdir: one that cannot be made says why, and a directory never used goes with it") {
  Scratch s;
  valve::TempDir missing;
  CHECK(missing.make(s.dir + "/no-such-directory", "valve-worker-1-1") == -ENOENT);
  CHECK(missing.path().empty());
  std::vector<std::string> env = {"TMPDIR=/elsewhere"};
  missing.give_to(env);
  CHECK(env == std::vector<std::string>{"TMPDIR=/elsewhere"});
  std::string path;
  {
    valve::TempDir unused;
    REQUIRE(unused.make(s.dir, "valve-worker-1-2") == 0);
    path = unused.path();
    write_file(path + "/left", "by a worker that never ran");
  }
  CHECK_FALSE(exists(path));
}
