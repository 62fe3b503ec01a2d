# parallel: the DP x PP x CP x TP process grid (coordinates, sub-communicator membership,
# layout check, stage layers, balanced causal token chunks, release without leaks) at 1-4 ranks
# (4 is oversubscribed on a 2-core machine).
set(CF_TEST_LIBS cf_parallel)
foreach(np 1 2 3 4)
  cf_mpi_test(grid test_grid ${np} fast)
endforeach()
unset(CF_TEST_LIBS)
# ring attention for context parallelism against a naive double-precision reference at cp = 1-4
set(CF_TEST_LIBS cf_parallel)
foreach(np 1 2 3 4)
  cf_mpi_test(ring test_ring ${np} fast)
endforeach()
unset(CF_TEST_LIBS)
# the bucketed gradient all-reduce: exact sums, bucket-sized pieces, the in-flight bound
set(CF_TEST_LIBS cf_parallel)
foreach(np 1 2 3)
  cf_mpi_test(reducer test_reducer ${np} fast)
endforeach()
unset(CF_TEST_LIBS)
