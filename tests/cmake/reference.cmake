# reference.cmake: the C model against the PyTorch reference dumps in tests/reference
# (regenerate with tests/reference/make_reference.py, see tests/reference/README.md).
set(CF_TEST_LIBS cf_model cf_core)
cf_test(reference_vae test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_vae.h5)
cf_test(reference_gauss test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_gauss.h5)
cf_test(reference_vae_rot4 test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_vae_rot4.h5)
cf_test(reference_gmm test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_gmm.h5)
cf_test(reference_gauss_nohist test_reference fast
        ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_gauss_nohist.h5)
cf_test(reference_fm test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_fm.h5)
cf_test(reference_cvae test_reference fast ${CMAKE_CURRENT_SOURCE_DIR}/reference/ref_cvae.h5)
unset(CF_TEST_LIBS)
