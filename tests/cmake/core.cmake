set(CF_TEST_LIBS cf_core)
cf_test(core_rng test_rng fast)
cf_test(core_mem test_mem fast)
unset(CF_TEST_LIBS)
