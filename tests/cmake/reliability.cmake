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
