// The unit test runner. Like libuv's runner, the binary doubles as a helper process for tests that
// need a child doing something specific: `valve-unit-tests --as-listener=PORT` listens on
// 127.0.0.1:PORT, prints "listening" and waits to be killed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

int run_listener(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
      listen(fd, 8) != 0) {
    std::perror("as-listener");
    return 1;
  }
  std::printf("listening\n");
  std::fflush(stdout);
  while (true) pause();
}

}  // namespace

int main(int argc, char **argv) {
  if (argc == 2 && std::strncmp(argv[1], "--as-listener=", 14) == 0)
    return run_listener(std::atoi(argv[1] + 14));
  doctest::Context context(argc, argv);
  return context.run();
}
