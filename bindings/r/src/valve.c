/* .Call entry points over valve.h. Errors are raised as R conditions of class "valve_error" by
 * the R function valve_abort(); every valve resource is released before that call jumps away. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define R_NO_REMAP
#include <R.h>
#include <R_ext/Rdynload.h>
#include <Rinternals.h>

#include <valve/valve.h>

#if !VALVE_VERSION_CHECK(0, 1, 0)
#error "the valve R package needs libvalve 0.1.0 or newer"
#endif

/* Events arrive on valve's loop thread, where R must never run: they wait in this ring until
 * valve_events() drains it; when it is full the oldest are dropped and counted. */
typedef struct {
  pthread_mutex_t mutex;
  char **items;
  size_t head, count, capacity, dropped;
} event_ring;

typedef struct {
  valve_server_t *sv;
  event_ring *events; /* owned by sv (freed by its destroy callback); NULL without events */
} r_server;

#ifndef NORET
#define NORET __attribute__((noreturn))
#endif

static void NORET raise_error(int code, const char *message) {
  SEXP ns = PROTECT(R_FindNamespace(Rf_mkString("valve")));
  SEXP fn = PROTECT(Rf_findFun(Rf_install("valve_abort"), ns));
  SEXP r_code = PROTECT(Rf_ScalarInteger(code));
  SEXP r_name = PROTECT(Rf_mkString(valve_err_name(code)));
  SEXP r_message = PROTECT(Rf_mkString(message && *message ? message : valve_strerror(code)));
  SEXP call = PROTECT(Rf_lang4(fn, r_code, r_name, r_message));
  Rf_eval(call, ns);
  UNPROTECT(6);
  Rf_error("%s", valve_strerror(code)); /* not reached: valve_abort() always signals */
}

static void on_event(void *user_data, const char *event_json) {
  event_ring *r = user_data;
  char *copy = strdup(event_json);
  pthread_mutex_lock(&r->mutex);
  if (!copy) {
    r->dropped++;
  } else {
    if (r->count == r->capacity) {
      free(r->items[r->head]);
      r->head = (r->head + 1) % r->capacity;
      r->count--;
      r->dropped++;
    }
    r->items[(r->head + r->count) % r->capacity] = copy;
    r->count++;
  }
  pthread_mutex_unlock(&r->mutex);
}

static void ring_free(void *user_data) {
  event_ring *r = user_data;
  for (size_t i = 0; i < r->count; i++) free(r->items[(r->head + i) % r->capacity]);
  pthread_mutex_destroy(&r->mutex);
  free(r->items);
  free(r);
}

static event_ring *ring_new(size_t capacity) {
  event_ring *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->items = calloc(capacity, sizeof *r->items);
  if (!r->items) {
    free(r);
    return NULL;
  }
  r->capacity = capacity;
  pthread_mutex_init(&r->mutex, NULL);
  return r;
}

static void finalize_server(SEXP ptr) {
  r_server *s = R_ExternalPtrAddr(ptr);
  if (!s) return;
  R_ClearExternalPtr(ptr);
  valve_server_free(s->sv); /* stops it with a zero deadline and ends its workers */
  free(s);
}

static r_server *get_server(SEXP ptr) {
  if (TYPEOF(ptr) != EXTPTRSXP) Rf_error("not a valve server");
  r_server *s = R_ExternalPtrAddr(ptr);
  if (!s) raise_error(VALVE_ESTATE, "this valve server no longer exists (was it saved and loaded?)");
  return s;
}

SEXP C_version(void) { return Rf_mkString(valve_version_string()); }

/* Every option's name and one-line description, in documentation order. */
SEXP C_options(void) {
  size_t n = 0;
  while (valve_config_key(n)) n++;
  SEXP out = PROTECT(Rf_allocVector(STRSXP, (R_xlen_t)n));
  SEXP names = PROTECT(Rf_allocVector(STRSXP, (R_xlen_t)n));
  for (size_t i = 0; i < n; i++) {
    const char *key = valve_config_key(i);
    const char *text = valve_config_describe(key);
    SET_STRING_ELT(names, (R_xlen_t)i, Rf_mkChar(key));
    SET_STRING_ELT(out, (R_xlen_t)i, Rf_mkChar(text ? text : ""));
  }
  Rf_setAttrib(out, R_NamesSymbol, names);
  UNPROTECT(2);
  return out;
}

/* Creates a server from option names and values (character vectors), keeping up to
 * event_capacity events for valve_events() (0: none); nothing is started. */
SEXP C_new(SEXP keys, SEXP values, SEXP event_capacity) {
  if (TYPEOF(keys) != STRSXP || TYPEOF(values) != STRSXP || XLENGTH(keys) != XLENGTH(values))
    Rf_error("keys and values must be character vectors of the same length");
  int capacity = Rf_asInteger(event_capacity);
  if (capacity == NA_INTEGER || capacity < 0) Rf_error("the event capacity must be 0 or more");

  /* The handle exists before the server does, so an allocation error leaks nothing. */
  SEXP ptr = PROTECT(R_MakeExternalPtr(NULL, R_NilValue, R_NilValue));
  R_RegisterCFinalizerEx(ptr, finalize_server, TRUE);
  char message[1024] = "";
  valve_config_t *cfg = NULL;
  r_server *s = NULL;
  int rc = valve_config_new(&cfg);
  for (R_xlen_t i = 0; rc == 0 && i < XLENGTH(keys); i++)
    rc = valve_config_set(cfg, CHAR(STRING_ELT(keys, i)), CHAR(STRING_ELT(values, i)));
  event_ring *ring = NULL;
  if (rc == 0 && capacity > 0) {
    ring = ring_new((size_t)capacity);
    /* On failure valve runs ring_free at once, so ring is valve's either way. */
    rc = ring ? valve_config_set_event_callback(cfg, on_event, ring, ring_free) : VALVE_ENOMEM;
  }
  if (rc == 0) {
    s = calloc(1, sizeof *s);
    rc = s ? valve_server_new(&s->sv, cfg) : VALVE_ENOMEM;
  }
  if (rc != 0) {
    snprintf(message, sizeof message, "%s", valve_config_last_error(cfg));
    free(s);
    valve_config_free(cfg);
    raise_error(rc, message);
  }
  s->events = ring; /* freed by valve with the server, which holds the last reference */
  valve_config_free(cfg);
  R_SetExternalPtrAddr(ptr, s);
  UNPROTECT(1);
  return ptr;
}

/* valve's loop thread is created inside valve_server_start() and inherits this thread's signal
 * mask. R's handlers must not run there: its SIGPIPE handler raises an R error (a write to a
 * closed client would abort R), SIGINT must reach R's thread to interrupt it, and SIGUSR1/2 quit
 * R. So they stay blocked on the loop thread; valve's workers start with a clean mask. */
SEXP C_start(SEXP ptr) {
  r_server *s = get_server(ptr);
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGPIPE);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGUSR1);
  sigaddset(&block, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int rc = valve_server_start(s->sv);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return R_NilValue;
}

/* Asks the server to stop; returns at once. deadline: seconds, negative for graceful-timeout. */
SEXP C_stop(SEXP ptr, SEXP deadline) {
  r_server *s = get_server(ptr);
  int rc = valve_server_stop(s->sv, Rf_asReal(deadline));
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return R_NilValue;
}

/* Waits for a started server to stop: NULL after a clean stop, else the error. */
SEXP C_wait(SEXP ptr) {
  r_server *s = get_server(ptr);
  int rc = valve_server_wait(s->sv);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return R_NilValue;
}

/* Reloads: returns once the new generation serves, else raises (the old one keeps serving). */
SEXP C_reload(SEXP ptr) {
  r_server *s = get_server(ptr);
  int rc = valve_server_reload(s->sv);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return R_NilValue;
}

/* Sets n-min and n-max (whole numbers of 0 or more, checked by the R function valve_scale()). */
SEXP C_scale(SEXP ptr, SEXP n_min, SEXP n_max) {
  r_server *s = get_server(ptr);
  double lo = Rf_asReal(n_min), hi = Rf_asReal(n_max);
  if (!(lo >= 0 && lo <= 4294967295.0 && lo == (double)(unsigned)lo) ||
      !(hi >= 0 && hi <= 4294967295.0 && hi == (double)(unsigned)hi))
    Rf_error("n_min and n_max must be whole numbers from 0 to 4294967295");
  int rc = valve_server_scale(s->sv, (unsigned)lo, (unsigned)hi);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return R_NilValue;
}

SEXP C_status(SEXP ptr) {
  r_server *s = get_server(ptr);
  char *json = NULL;
  int rc = valve_server_status(s->sv, &json);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  SEXP out = PROTECT(Rf_allocVector(STRSXP, 1));
  SET_STRING_ELT(out, 0, Rf_mkCharCE(json, CE_UTF8)); /* on failure R jumps and json leaks */
  valve_free(json);
  UNPROTECT(1);
  return out;
}

/* "host:port", or NA when the server does not listen (yet, or any more). */
SEXP C_address(SEXP ptr) {
  r_server *s = get_server(ptr);
  char buf[512];
  int rc = valve_server_address(s->sv, buf, sizeof buf);
  if (rc == VALVE_ESTATE) return Rf_ScalarString(NA_STRING);
  if (rc != 0) raise_error(rc, valve_server_last_error(s->sv));
  return Rf_mkString(buf);
}

/* Drains the events received so far: a character vector of JSON objects, oldest first, with
 * attribute "dropped" counting those that did not fit since the last call. */
SEXP C_events(SEXP ptr) {
  r_server *s = get_server(ptr);
  event_ring *r = s->events;
  if (!r) raise_error(VALVE_ESTATE, "this server keeps no events: start it with events > 0");
  /* Allocate before locking: an R allocation error must not leave the mutex held. */
  char **items = (char **)R_alloc(r->capacity, sizeof *items);
  pthread_mutex_lock(&r->mutex);
  size_t n = r->count, dropped = r->dropped;
  for (size_t i = 0; i < n; i++) items[i] = r->items[(r->head + i) % r->capacity];
  r->head = r->count = r->dropped = 0;
  pthread_mutex_unlock(&r->mutex);

  SEXP out = PROTECT(Rf_allocVector(STRSXP, (R_xlen_t)n));
  for (size_t i = 0; i < n; i++) {
    SET_STRING_ELT(out, (R_xlen_t)i, Rf_mkCharCE(items[i], CE_UTF8));
    free(items[i]);
  }
  Rf_setAttrib(out, Rf_install("dropped"), Rf_ScalarReal((double)dropped));
  UNPROTECT(1);
  return out;
}

static const R_CallMethodDef call_methods[] = {
    {"C_version", (DL_FUNC)&C_version, 0}, {"C_options", (DL_FUNC)&C_options, 0},
    {"C_new", (DL_FUNC)&C_new, 3},         {"C_start", (DL_FUNC)&C_start, 1},
    {"C_stop", (DL_FUNC)&C_stop, 2},       {"C_wait", (DL_FUNC)&C_wait, 1},
    {"C_status", (DL_FUNC)&C_status, 1},   {"C_address", (DL_FUNC)&C_address, 1},
    {"C_events", (DL_FUNC)&C_events, 1},   {"C_reload", (DL_FUNC)&C_reload, 1},
    {"C_scale", (DL_FUNC)&C_scale, 3},     {NULL, NULL, 0}};

void R_init_valve(DllInfo *dll) {
  R_registerRoutines(dll, NULL, call_methods, NULL, NULL);
  R_useDynamicSymbols(dll, FALSE);
  R_forceSymbols(dll, TRUE);
}
