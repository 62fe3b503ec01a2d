# metrics: exact W1/W2, MMD and energy distance against scipy/numpy reference values
# (tests/data/metrics_ref.txt, written by tests/reference/make_metrics_ref.py).
set(CF_TEST_LIBS cf_metrics)
cf_test(metrics test_metrics fast ${CMAKE_CURRENT_SOURCE_DIR}/data/metrics_ref.txt)
unset(CF_TEST_LIBS)
