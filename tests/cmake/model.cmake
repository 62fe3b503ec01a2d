# model: gradient checks of every kernel and of the full loss, KV-cache consistency and the
# batch invariance of sampling (row-deterministic linears).
set(CF_TEST_LIBS cf_model)
cf_test(model_grad test_model_grad fast)
cf_test(model_kvcache test_kvcache fast)
cf_test(model_vmath test_vmath fast)
cf_test(model_diag test_model_diag fast)
unset(CF_TEST_LIBS)
# the KV-cached forward on model parts (tensor, pipeline, context parallel) vs the whole model
set(CF_TEST_LIBS cf_model)
cf_mpi_test(model_kvcache_tp2 test_kvcache_par 2 fast 2 1 1)
cf_mpi_test(model_kvcache_pp2 test_kvcache_par 2 fast 1 2 1)
cf_mpi_test(model_kvcache_cp2 test_kvcache_par 2 fast 1 1 2)
cf_mpi_test(model_kvcache_cp3 test_kvcache_par 3 fast 1 1 3)
cf_mpi_test(model_kvcache_tp2pp2 test_kvcache_par 4 fast 2 2 1)
cf_mpi_test(model_kvcache_tp2cp2 test_kvcache_par 4 fast 2 1 2)
cf_mpi_test(model_kvcache_pp2cp2 test_kvcache_par 4 fast 1 2 2)
unset(CF_TEST_LIBS)
