# reliability: fault injection (CF_FAULT, core) and the -par_timeout watchdog (parallel).
set(CF_TEST_LIBS cf_core)
cf_test(core_fault test_fault fast)
unset(CF_TEST_LIBS)

# test_watchdog has two modes: `unit` (one process, forked children) and `loop` (2 ranks under
# mpiexec, driven by test_watchdog.sh, which checks exit codes and stderr).
add_executable(test_watchdog ${CMAKE_CURRENT_SOURCE_DIR}/test_watchdog.c)
target_compile_options(test_watchdog PRIVATE ${CF_WARN} ${CF_SAN})
target_link_libraries(test_watchdog PRIVATE cf_parallel cf_core)
add_test(NAME parallel_watchdog_unit COMMAND $<TARGET_FILE:test_watchdog> unit)
set_tests_properties(parallel_watchdog_unit PROPERTIES LABELS "fast" TIMEOUT 120
                     ENVIRONMENT "${CF_TEST_ENV}")
cf_script_test(parallel_watchdog.np2 test_watchdog.sh "fast;mpi" $<TARGET_FILE:test_watchdog>
               ${MPIEXEC_EXECUTABLE})
set_tests_properties(parallel_watchdog.np2 PROPERTIES PROCESSORS 2 TIMEOUT 300)

# the numerical guard (-train_nan_policy skip|stop, -train_nan_max_skips) through the binary,
# NaN/Inf injected by CF_FAULT's value sites nan_grad / nan_loss on one rank: 1 rank, dp2, tp2,
# pp2 and the CFM baseline (skipped update bit-identical to a shorter run; stop: exit 4, no
# checkpoint of the poisoned step, resume)
cf_script_test(app_nan_policy test_nan_policy.sh "fast;mpi")
set_tests_properties(app_nan_policy PROPERTIES PROCESSORS 2)
