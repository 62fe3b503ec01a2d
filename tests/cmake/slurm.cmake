# slurm: what calmflow 6 adds for batch clusters (label `slurm`).
# slurm_train / slurm_timelimit / slurm_sweep / slurm_scaling / slurm_experiments: the job scripts in jobs/ against a
# real, throw-away one-node Slurm cluster (munged, slurmctld and slurmd started by
# tests/slurm/cluster.sh with all state in a temporary directory, stopped by PID at the end,
# pass or fail). Each test starts its own cluster on free ports; RESOURCE_LOCK runs them one at
# a time (the node offers 2 CPUs). slurm_timelimit waits for Slurm's own pre-timeout signal
# (about 30 s).
# Skipped (exit 77) when Slurm is missing and cannot be installed, or when not run as root.
foreach(t train timelimit sweep scaling experiments)
  cf_script_test(slurm_${t} test_slurm_${t}.sh slurm)
  set_tests_properties(slurm_${t} PROPERTIES PROCESSORS 2 TIMEOUT 300 SKIP_RETURN_CODE 77
                                             RESOURCE_LOCK cf_slurm_cluster)
endforeach()
# slurm_site_build: the build honours a site's hints (PETSC_DIR/PETSC_ARCH, HDF5_ROOT,
# MPI_C_COMPILER or CC=mpicc, SCALAPACK_PKG, SCALAPACK_LIBRARIES), configured against the
# Debian installs passed explicitly with pkg-config's default search hidden
cf_script_test(slurm_site_build test_slurm_site_build.sh "slurm;build")
set_tests_properties(slurm_site_build PROPERTIES PROCESSORS 2 TIMEOUT 300)
