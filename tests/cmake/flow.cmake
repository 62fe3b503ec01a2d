# flow: conditional paths (straight, bridge, noisy, ve), the training-batch layout and
# targets, cf_flow_advance, and the synthetic / empirical distributions (tests/test_flow.c).
set(CF_TEST_LIBS cf_flow)
cf_test(flow test_flow fast)
unset(CF_TEST_LIBS)
# the CFM baseline (tests/test_cfm.c): layout, gradient check, pairs, PETSc TS sampling and a
# training smoke on one rank; the global-batch OT coupling at 1, 2 and 3 ranks.
set(CF_TEST_LIBS cf_flow)
cf_test(flow_cfm test_cfm fast)
cf_mpi_test(flow_cfm_ot test_cfm 2 fast ot)
cf_mpi_test(flow_cfm_ot test_cfm 3 fast ot)
unset(CF_TEST_LIBS)
