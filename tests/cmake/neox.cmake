# pretrained GPT-NeoX / Pythia backbones (src/io/safetensors.c, src/train/neox.c): a small model
# directory written by tests/test_neox_load.py loaded at 1 rank, tp2 and pp2 against an
# independent PyTorch forward, the sharded layout, every defect one error line; then
# `calmflow train -model_init_hf` and its option conflicts (tests/test_neox_load.sh).
set(CF_TEST_LIBS cf_train)
cf_test_program(test_neox_load)
unset(CF_TEST_LIBS)
cf_script_test(neox_load test_neox_load.sh "fast;mpi" $<TARGET_FILE:test_neox_load>)
set_tests_properties(neox_load PROPERTIES PROCESSORS 2)
