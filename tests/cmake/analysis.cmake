# analysis: analysis/plot_samples.py on fake run directories (needs /usr/bin/python3 with
# numpy, h5py and matplotlib, which scripts/install-deps.sh installs).
cf_script_test(analysis_plot test_plot.sh fast)
