# io layer: point-set HDF5 files, samples writer, checkpoints, ckpt/LATEST and pruning.
set(CF_TEST_LIBS cf_io)
cf_mpi_test(io_h5io test_h5io 1 fast)
cf_mpi_test(io_h5io test_h5io 2 fast)
cf_mpi_test(io_ckpt test_ckpt 1 fast)
cf_mpi_test(io_ckpt test_ckpt 2 fast)
cf_mpi_test(io_ckpt test_ckpt 3 fast)
cf_mpi_test(io_ckpt test_ckpt 4 fast)
unset(CF_TEST_LIBS)
set(CF_TEST_LIBS cf_io)
cf_mpi_test(io_samples test_samples 1 fast)
unset(CF_TEST_LIBS)
# AnnData .h5ad reader: the fixtures in tests/data/h5ad, and ../shared/data/hsmm/hsmm.h5ad when
# present (skipped with a message otherwise).
set(CF_TEST_LIBS cf_io)
cf_mpi_test(io_h5ad test_h5ad 1 fast)
cf_mpi_test(io_h5ad test_h5ad 2 fast)
cf_mpi_test(io_h5ad test_h5ad 3 fast)
unset(CF_TEST_LIBS)
# byte-level BPE tokenizer: GPT-2 and tokenizer.json fixtures against reference encodings
# (tests/data/bpe, written by tests/reference/make_bpe_refs.py), error messages, speed.
set(CF_TEST_LIBS cf_io)
cf_test(io_bpe test_bpe fast ${CMAKE_CURRENT_SOURCE_DIR}/data/bpe)
unset(CF_TEST_LIBS)
# HDF5 files claiming huge extents (crafted with h5py: contiguous unwritten, overflowing,
# compressed without chunks, AnnData /X and obs/_index) are refused before any allocation with
# one line naming the file and the dataset
cf_script_test(io_h5_limits test_h5_limits.sh "fast;mpi")
set_tests_properties(io_h5_limits PROPERTIES PROCESSORS 2)
