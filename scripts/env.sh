# env.sh: environment for running calmflow under Open MPI on a workstation or CI (sourced by
# the other scripts). One OpenBLAS thread per rank; root and oversubscription allowed so the
# tests can run 3 and 4 ranks on a 2-core machine as root (containers, CI).
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=1
export MPLBACKEND=Agg
