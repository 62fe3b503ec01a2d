#!/usr/bin/env bash
# test_slurm_site_build.sh: the CMake build honours the hints a real site uses (INSTALL.md,
# "Real sites"), tested by hiding the Debian installs from pkg-config's default search and
# pointing the build at them explicitly:
#   - without hints PETSc is not found (so the hints below are what finds it);
#   - PETSC_DIR (prefix install), HDF5_ROOT, -DMPI_C_COMPILER=mpicc and -DSCALAPACK_PKG=<a
#     site's pkg-config name>: configures, HDF5 comes from HDF5_ROOT (not the h5pcc on PATH),
#     and a program linking every dependency builds and runs;
#   - CC=mpicc, PETSC_DIR + PETSC_ARCH (source-tree layout) and -DSCALAPACK_LIBRARIES=<link
#     line> without any ScaLAPACK .pc file: the same;
#   - a PETSC_DIR without PETSc.pc stops the configure with one message naming it.
set -u
SRC=${CF_SOURCE_DIR:?set by ctest}
T=$(mktemp -d -t cf-sitebuild.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() {
  echo "FAIL $*"
  exit 1
}
HDF5_DIR=/usr/lib/x86_64-linux-gnu/hdf5/openmpi
PETSC_PREFIX=/usr/lib/petsc
PETSC_TREE=$(readlink -f "$PETSC_PREFIX") # /usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real
[ -d "$HDF5_DIR" ] && [ -e "$PETSC_PREFIX/lib/pkgconfig/PETSc.pc" ] ||
  fail "this test expects Debian's libhdf5-openmpi-dev and petsc-dev (scripts/install-deps.sh)"
SL_PC=$(pkg-config --variable=pcfiledir scalapack-openmpi)/scalapack-openmpi.pc
[ -r "$SL_PC" ] || fail "no scalapack-openmpi.pc"

# pkg-config sees only $T/pc: every system .pc file except PETSc's and ScaLAPACK's
mkdir -p "$T/pc" "$T/site"
for d in $(pkg-config --variable pc_path pkg-config | tr : ' '); do
  [ -d "$d" ] || continue
  for f in "$d"/*.pc; do
    case "$(basename "$f")" in PETSc.pc | petsc.pc | scalapack*.pc) continue ;; esac
    [ -e "$T/pc/$(basename "$f")" ] || ln -s "$f" "$T/pc/"
  done
done
cp "$SL_PC" "$T/site/scalapack-site.pc" # a site's own name for its ScaLAPACK
export PKG_CONFIG_LIBDIR=$T/pc
unset PKG_CONFIG_PATH PETSC_DIR PETSC_ARCH HDF5_ROOT CC

cfg() { # NAME [cmake args...]: configure into $T/NAME, output in $T/NAME.log
  local name=$1
  shift
  cmake -S "$SRC" -B "$T/$name" -DCMAKE_BUILD_TYPE=Release "$@" >"$T/$name.log" 2>&1
}
cache() { sed -n "s/^$2:[A-Z]*=//p" "$T/$1/CMakeCache.txt"; }
build_and_run() { # NAME: the core library and a test program that link PETSc, ScaLAPACK, HDF5, MPI
  cmake --build "$T/$1" -j2 --target test_rng >"$T/$1.build.log" 2>&1 ||
    { tail -n 30 "$T/$1.build.log"; fail "$1: build of test_rng"; }
  "$T/$1/tests/test_rng" >"$T/$1.run.log" 2>&1 || { cat "$T/$1.run.log"; fail "$1: test_rng"; }
}

# no hints: PETSc is not found
if cfg nohint; then fail "configured without PETSC_DIR although pkg-config cannot see PETSc"; fi
grep -q 'PETSc' "$T/nohint.log" || { cat "$T/nohint.log"; fail "no-hint failure does not name PETSc"; }
echo "ok   without hints: PETSc not found"

# PETSC_DIR (prefix), HDF5_ROOT, MPI_C_COMPILER, SCALAPACK_PKG
PETSC_DIR=$PETSC_PREFIX HDF5_ROOT=$HDF5_DIR PKG_CONFIG_PATH=$T/site \
  cfg a -DMPI_C_COMPILER=mpicc -DSCALAPACK_PKG=scalapack-site ||
  { cat "$T/a.log"; fail "configure with PETSC_DIR, HDF5_ROOT, MPI_C_COMPILER, SCALAPACK_PKG"; }
grep -q -- '-- calmflow: MPI .*; HDF5 .* parallel=TRUE; PETSc 3\.[0-9.]*; ScaLAPACK 2\.' "$T/a.log" ||
  { cat "$T/a.log"; fail "a: summary line"; }
[ "$(cache a PETSC_DIR)" = "$PETSC_PREFIX" ] || fail "a: PETSC_DIR not taken from the environment"
[ "$(cache a CF_SCALAPACK_MODULE_NAME)" = scalapack-site ] || fail "a: SCALAPACK_PKG not used"
[ "$(cache a HDF5_C_INCLUDE_DIR)" = "$HDF5_DIR/include" ] ||
  fail "a: HDF5 include dir '$(cache a HDF5_C_INCLUDE_DIR)' is not under HDF5_ROOT"
case "$(cache a MPI_C_COMPILER)" in */mpicc) ;; *) fail "a: MPI_C_COMPILER is '$(cache a MPI_C_COMPILER)'" ;; esac
build_and_run a
echo "ok   PETSC_DIR + HDF5_ROOT + MPI_C_COMPILER + SCALAPACK_PKG: configured, built, ran"

# CC=mpicc, PETSC_DIR + PETSC_ARCH, SCALAPACK_LIBRARIES (no .pc for ScaLAPACK at all)
CC=mpicc PETSC_DIR=$(dirname "$PETSC_TREE") PETSC_ARCH=$(basename "$PETSC_TREE") HDF5_ROOT=$HDF5_DIR \
  cfg b "-DSCALAPACK_LIBRARIES=-lscalapack-openmpi" ||
  { cat "$T/b.log"; fail "configure with CC=mpicc, PETSC_DIR + PETSC_ARCH, SCALAPACK_LIBRARIES"; }
case "$(cache b CMAKE_C_COMPILER)" in */mpicc) ;; *) fail "b: C compiler '$(cache b CMAKE_C_COMPILER)'" ;; esac
[ "$(cache b PETSC_ARCH)" = "$(basename "$PETSC_TREE")" ] || fail "b: PETSC_ARCH not taken from the environment"
grep -q 'ScaLAPACK from SCALAPACK_LIBRARIES' "$T/b.log" || { cat "$T/b.log"; fail "b: SCALAPACK_LIBRARIES not used"; }
build_and_run b
echo "ok   CC=mpicc + PETSC_DIR/PETSC_ARCH + SCALAPACK_LIBRARIES: configured, built, ran"

# a wrong PETSC_DIR: one clear message
if PETSC_DIR=$T/nowhere cfg c; then fail "configured with a PETSC_DIR that holds no PETSc"; fi
tr -s ' \n' ' ' <"$T/c.log" | # CMake wraps long messages
  grep -q "PETSC_DIR '$T/nowhere', PETSC_ARCH '': no PETSc.pc in $T/nowhere/lib/pkgconfig" ||
  { cat "$T/c.log"; fail "c: message"; }
echo "ok   a wrong PETSC_DIR is named"
echo "test_slurm_site_build: ok"
