# train: the optimizer layer — learning-rate schedule, gradient clipping, AdamW and the
# coupled-L2 Adam against double-precision references of torch's updates (tests/test_optim.c).
set(CF_TEST_LIBS cf_train)
cf_test(optim test_optim fast)
# training on the model's own rollout (selffeed.h) against a point-by-point reference rollout
cf_test(train_selffeed test_selffeed fast)
# no allocation inside a training or sampling step: every malloc / free of the test and the
# static calmflow libraries goes through the test's counters
cf_test(train_noalloc test_noalloc fast)
target_link_options(test_noalloc PRIVATE "LINKER:--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free,--wrap=posix_memalign,--wrap=aligned_alloc")
unset(CF_TEST_LIBS)
