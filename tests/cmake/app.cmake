# End-to-end tests of the calmflow binary.
cf_script_test(app_badinput test_badinput.sh fast)
cf_script_test(app_layout test_layout.sh fast)
cf_script_test(e2e_moons_np1 test_e2e.sh e2e 1)
cf_script_test(e2e_moons_np2 test_e2e.sh e2e 2)
set_tests_properties(e2e_moons_np2 app_layout PROPERTIES PROCESSORS 2)
cf_script_test(app_faults test_faults.sh "fast;mpi")
set_tests_properties(app_faults PROPERTIES PROCESSORS 2)
cf_script_test(app_resume test_resume.sh "fast;mpi")
set_tests_properties(app_resume PROPERTIES PROCESSORS 2)
cf_script_test(app_preempt test_preempt.sh "fast;mpi")
set_tests_properties(app_preempt PROPERTIES PROCESSORS 2)
# layout invariance of the process grid: every TP/PP/CP/DP layout up to 4 ranks equals 1 rank
cf_script_test(app_parallel test_parallel.sh "fast;mpi")
set_tests_properties(app_parallel PROPERTIES PROCESSORS 2)
# one train per run directory: <run_dir>/.lock refuses a second, SIGKILL frees it
cf_script_test(app_lock test_lock.sh "fast;mpi")
set_tests_properties(app_lock PROPERTIES PROCESSORS 2)
# the checkpoint fault catalogue: kills mid-write and before the rename, a truncated newest
# checkpoint, flipped bytes, no space, kill -9 of the job; resume always finds the newest valid
cf_script_test(app_ckpt_faults test_ckpt_faults.sh "fast;mpi")
set_tests_properties(app_ckpt_faults PROPERTIES PROCESSORS 2)
# sampling under the coordinator: the same /x at 1-4 ranks and any batch, kill and resume
cf_script_test(app_sample test_sample.sh "fast;mpi")
set_tests_properties(app_sample PROPERTIES PROCESSORS 2)
# calmflow eval at 1 and 2 ranks: the collective metrics (frechet, sinkhorn_*) against numpy
cf_script_test(app_eval test_eval.sh "fast;mpi")
set_tests_properties(app_eval PROPERTIES PROCESSORS 2)
# the CFM baseline through the binary: training across ranks and resume, sampling with PETSc TS
cf_script_test(app_cfm test_cfm_cli.sh "fast;mpi")
set_tests_properties(app_cfm PROPERTIES PROCESSORS 2)
# the conditional CFM (-cfm_cond, -data_exclude, -sample_cond) on a tiny .h5ad through
# `calmflow data`: ranks agree, resume, samples land by condition, bad input
cf_script_test(app_cfm_cond test_cfm_cond.sh "fast;mpi")
set_tests_properties(app_cfm_cond PROPERTIES PROCESSORS 2)
# calmflow data -data_h5ad: single-cell preprocessing to a PCA point set at 1 and 2 ranks against
# numpy (fixture tests/data/h5ad/scprep_60x200.h5ad), bad options, and hsmm.h5ad when present
cf_script_test(app_data_h5ad test_data_h5ad.sh "fast;mpi")
set_tests_properties(app_data_h5ad PROPERTIES PROCESSORS 2)
# a run directory that belongs to another run is refused (one line, nothing changed); the same
# configuration resumes or restarts, -run_overwrite 1 starts afresh (tests/test_run_overwrite.sh)
cf_script_test(app_run_overwrite test_run_overwrite.sh "fast;mpi")
set_tests_properties(app_run_overwrite PROPERTIES PROCESSORS 2)
# docs/errors.md: the bad-input rows no other test covers (options, data files, outputs, run
# directories, samples files, tokenizers, pretrained directories, the job scripts' environment):
# the documented exit status, one line naming the file or option, the workspace unchanged
cf_script_test(app_errors test_errors.sh "fast;mpi")
set_tests_properties(app_errors PROPERTIES PROCESSORS 2)
# -flow_sigma auto: the bridge noise scales with the dimension (tests/test_sigma_auto.sh)
cf_script_test(app_sigma_auto test_sigma_auto.sh fast)
