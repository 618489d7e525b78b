/* Embedding valve in a C program: start a pool on examples/hello/plumber.R, send one request
 * through it, print the answer, stop.
 *
 *   cc embed.c $(pkg-config --cflags --libs valve) -o embed && ./embed [path/to/plumber.R]
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <valve/valve.h>

static int fail(const char *what, const char *message) {
  fprintf(stderr, "embed: %s: %s\n", what, message);
  return 1;
}

/* One GET over a plain socket; the whole response goes to stdout. 0 when it is a 200. */
static int get(const char *address, const char *path) {
  char host[64];
  const char *colon = strrchr(address, ':');
  if (!colon || (size_t)(colon - address) >= sizeof host) return -1;
  memcpy(host, address, (size_t)(colon - address));
  host[colon - address] = '\0';
  struct sockaddr_in sa = {0};
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)atoi(colon + 1));
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -1;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) return -1;
  char request[256];
  int n = snprintf(request, sizeof request,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, address);
  if (write(fd, request, (size_t)n) != n) return -1;
  char buf[4096];
  ssize_t got;
  int ok = -1;
  while ((got = read(fd, buf, sizeof buf)) > 0) {
    if (ok == -1) ok = got >= 12 && memcmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : 1;
    fwrite(buf, 1, (size_t)got, stdout);
  }
  close(fd);
  printf("\n");
  return ok == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
  const char *file = argc > 1 ? argv[1] : "examples/hello/plumber.R";
  valve_config_t *cfg = NULL;
  valve_server_t *sv = NULL;
  if (valve_config_new(&cfg) != 0) return fail("config", "out of memory");
  if (valve_config_set(cfg, "file", file) != 0 || valve_config_set(cfg, "port", "0") != 0 ||
      valve_config_set(cfg, "n-max", "2") != 0)
    return fail("config", valve_config_last_error(cfg));
  /* valve will not start workers as root unless told to (or given a "user" to run them as): a
   * container that runs everything as root says so. */
  if (geteuid() == 0 && valve_config_set(cfg, "allow-root", "true") != 0)
    return fail("config", valve_config_last_error(cfg));
  if (valve_server_new(&sv, cfg) != 0) return fail("server", valve_config_last_error(cfg));
  valve_config_free(cfg);

  if (valve_server_start(sv) != 0) return fail("start", valve_server_last_error(sv));
  char address[64];
  valve_server_address(sv, address, sizeof address);
  printf("valve %s serving %s on http://%s\n", valve_version_string(), file, address);
  int rc = get(address, "/echo?msg=hello%20from%20C");
  valve_server_stop(sv, 10);
  int result = valve_server_wait(sv);
  valve_server_free(sv);
  if (rc != 0) return fail("request", "could not reach the server");
  return result == 0 ? 0 : fail("stop", valve_strerror(result));
}
