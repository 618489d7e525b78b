/* The public header compiles as plain C99 with -pedantic -Werror, and links against libvalve. */
#include <stdio.h>
#include <string.h>
#include <valve/valve.h>

#if !VALVE_VERSION_CHECK(0, 1, 0)
#error "version macros"
#endif

int main(void) {
  valve_config_t *cfg = NULL;
  if (valve_config_new(&cfg) != 0) return 1;
  if (valve_config_set(cfg, "n-max", "4") != 0) return 2;
  if (strcmp(valve_config_get(cfg, "n-max"), "4") != 0) return 3;
  if (valve_config_set(cfg, "no-such-key", "1") != VALVE_EINVALID) return 4;
  if (valve_version() != VALVE_VERSION_HEX) return 5;
  if (strcmp(valve_version_string(), VALVE_VERSION_STRING) != 0) return 6;
  printf("%s %s\n", valve_version_string(), valve_err_name(VALVE_ESTARTUP));
  valve_config_free(cfg);
  valve_server_free(NULL);
  valve_free(NULL);
  return 0;
}
