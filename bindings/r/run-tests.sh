#!/bin/sh
# Installs the R package from a copy in the build tree (R CMD INSTALL compiles inside the package
# directory, and the source tree stays clean) into $VALVE_R_LIB, then runs the testthat suite
# (`run-tests.sh test`), examples/embed.R (`run-tests.sh example`) or examples/model's tests,
# written with the package's test client (`run-tests.sh model`), or nothing (`run-tests.sh
# install`, what scripts/install-r-package runs). R runs without
# LD_LIBRARY_PATH: the package must find libvalve through the rpath its Makevars sets.
set -eu
mode=${1:-test}
: "${VALVE_SRC:?} ${VALVE_BUILD:?} ${VALVE_R_LIB:?}"
here=$(cd "$(dirname "$0")" && pwd)
# In a sanitized build meson sets VALVE_SANITIZER_RUNTIME: Rscript runs through bindings/sanitized,
# which preloads it (R CMD INSTALL does not: it only compiles and links).
host=""
if [ -n "${VALVE_SANITIZER_RUNTIME:-}" ]; then host="$here/../sanitized"; fi

stage=$(mktemp -d "$VALVE_BUILD/r-package.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
cp -R "$here" "$stage/valve"
rm -f "$stage"/valve/src/*.o "$stage"/valve/src/*.so
mkdir -p "$VALVE_R_LIB"
R CMD INSTALL --no-test-load --no-multiarch -l "$VALVE_R_LIB" "$stage/valve"

case "$mode" in
  install) ;;
  test)
    cd "$stage/valve/tests/testthat"
    env -u LD_LIBRARY_PATH $host Rscript --vanilla -e '
      .libPaths(c(Sys.getenv("VALVE_R_LIB"), .libPaths()))
      library(testthat)
      library(valve)
      cat("valve", valve_version(), "from", find.package("valve"), "\n")
      test_dir(".", package = "valve", load_package = "installed", reporter = "summary",
               stop_on_failure = TRUE, stop_on_warning = TRUE)'
    ;;
  example)
    env -u LD_LIBRARY_PATH $host Rscript --vanilla "$VALVE_SRC/examples/embed.R"
    ;;
  model)
    # As the README says: a fresh R session that finds the package through R_LIBS.
    cd "$VALVE_SRC"
    env -u LD_LIBRARY_PATH R_LIBS="$VALVE_R_LIB" Rscript -e \
      'testthat::test_dir("examples/model/tests/testthat", stop_on_failure = TRUE)'
    ;;
  *)
    echo "usage: $0 [test|example|model|install]" >&2
    exit 2
    ;;
esac
