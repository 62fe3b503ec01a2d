# flow: conditional paths (straight, bridge, noisy, ve), the training-batch layout and
# targets, cf_flow_advance, and the synthetic / empirical distributions (tests/test_flow.c).
set(CF_TEST_LIBS cf_flow)
cf_test(flow test_flow fast)
unset(CF_TEST_LIBS)
