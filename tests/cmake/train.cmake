# train: the optimizer layer — learning-rate schedule, gradient clipping, AdamW and the
# coupled-L2 Adam against double-precision references of torch's updates (tests/test_optim.c).
set(CF_TEST_LIBS cf_train)
cf_test(optim test_optim fast)
unset(CF_TEST_LIBS)
