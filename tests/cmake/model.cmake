# model: gradient checks of every kernel and of the full loss, KV-cache consistency and the
# batch invariance of sampling (row-deterministic linears).
set(CF_TEST_LIBS cf_model)
cf_test(model_grad test_model_grad fast)
cf_test(model_kvcache test_kvcache fast)
unset(CF_TEST_LIBS)
