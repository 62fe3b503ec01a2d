# analysis: analysis/plot_samples.py on fake run directories (needs /usr/bin/python3 with
# numpy, h5py and matplotlib, which scripts/install-deps.sh installs).
cf_script_test(analysis_plot test_plot.sh fast)
# analysis/experiments.py at its CI size: the whole calmflow 5 comparison, reduced (a few minutes)
cf_script_test(analysis_experiments test_experiments.sh e2e)
# analysis/oracle_head.py: the ideal Gaussian head's moments against true paths, and a small run
cf_script_test(analysis_oracle_head test_oracle_head.sh e2e)
