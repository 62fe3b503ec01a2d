set(CF_TEST_LIBS cf_core)
cf_test(core_rng test_rng fast)
cf_test(core_mem test_mem fast)
unset(CF_TEST_LIBS)
# the size_t-count MPI wrappers (mpichunk.h): split into 1-100-element pieces they give
# bit-identical results to the unsplit calls, at 1, 2 and 3 ranks
set(CF_TEST_LIBS cf_core)
foreach(np 1 2 3)
  cf_mpi_test(core_mpichunk test_mpichunk ${np} fast)
endforeach()
unset(CF_TEST_LIBS)
# the same through the binary: CF_MPI_CHUNK=5 changes no bit of training (dp2, tp2, pp2, cp2,
# ZeRO-1), sampling (dp2, tp2, pp2, cp2, CFM) or eval
cf_script_test(core_mpichunk_cli test_mpichunk_cli.sh "fast;mpi")
set_tests_properties(core_mpichunk_cli PROPERTIES PROCESSORS 2)
