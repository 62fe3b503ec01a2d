# metrics: exact W1/W2, MMD and energy distance against scipy/numpy reference values
# (tests/data/metrics_ref.txt, written by tests/reference/make_metrics_ref.py).
set(CF_TEST_LIBS cf_metrics)
cf_test(metrics test_metrics fast ${CMAKE_CURRENT_SOURCE_DIR}/data/metrics_ref.txt)
unset(CF_TEST_LIBS)
# the collective metrics: Sinkhorn (entropic OT) and the Frechet distance (ScaLAPACK) against
# numpy/scipy values (tests/reference/metrics_ot_ref.txt, written by gen_metrics.py), layout
# invariance (grids, blocks, row splits) at 1-3 ranks, closed forms, bad input
set(CF_TEST_LIBS cf_metrics)
foreach(np 1 2 3)
  cf_mpi_test(metrics_ot test_metrics_ot ${np} fast
              ${CMAKE_CURRENT_SOURCE_DIR}/reference/metrics_ot_ref.txt)
endforeach()
unset(CF_TEST_LIBS)
# distributed PCA (ScaLAPACK, covariance and Gram routes) against dense LAPACKE (dsyevd,
# dgesvd) in both regimes, layout invariance, reconstruction, bad input; R^2 of mean expression.
# LAPACKE is needed by this test only (liblapacke-dev), so a site without it still builds.
pkg_check_modules(CF_LAPACKE IMPORTED_TARGET lapacke)
if(CF_LAPACKE_FOUND)
  set(CF_TEST_LIBS cf_metrics PkgConfig::CF_LAPACKE)
  foreach(np 1 2 3)
    cf_mpi_test(pca test_pca ${np} fast)
  endforeach()
  unset(CF_TEST_LIBS)
else()
  message(STATUS "calmflow: no lapacke (pkg-config); the pca tests are not registered")
endif()
