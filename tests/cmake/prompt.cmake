# prompt: text prompts in front of the trajectory tokens (model.h "text prompt"): the model and
# its KV cache on one rank, on model parts (tensor, pipeline, context parallel), and the CLI.
set(CF_TEST_LIBS cf_model)
cf_test(prompt_model test_prompt_model fast)
unset(CF_TEST_LIBS)
# the C model with a prompt against the independent PyTorch reference (make_reference.py)
set(CF_TEST_LIBS cf_model cf_core)
cf_test(reference_gauss_prompt test_reference fast
        ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_gauss_prompt.h5)
unset(CF_TEST_LIBS)
# a prompt model on model parts vs the whole model: training gradients and the KV cache
set(CF_TEST_LIBS cf_model)
cf_mpi_test(prompt_tp2 test_prompt_par 2 fast 2 1 1)
cf_mpi_test(prompt_pp2 test_prompt_par 2 fast 1 2 1)
cf_mpi_test(prompt_cp2 test_prompt_par 2 fast 1 1 2)
cf_mpi_test(prompt_tp2pp2 test_prompt_par 4 fast 2 2 1)
cf_mpi_test(prompt_pp2cp2 test_prompt_par 4 fast 1 2 2)
unset(CF_TEST_LIBS)
# the CLI: -data_prompt training, sampling by prompt and by -sample_cond, layouts, bad input
cf_script_test(app_prompt test_prompt.sh "fast;mpi")
set_tests_properties(app_prompt PROPERTIES PROCESSORS 2)
