# analysis/hsmm.py at its CI size: the single-cell hold-out experiment (HSMM, 48 h held out)
# end to end on the real data (/work/shared/data/hsmm/hsmm.h5ad; skipped, exit 77, without it)
cf_script_test(analysis_hsmm test_hsmm.sh e2e)
set_tests_properties(analysis_hsmm PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
