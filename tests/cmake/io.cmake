# io layer: point-set HDF5 files, samples writer, checkpoints, ckpt/LATEST and pruning.
set(CF_TEST_LIBS cf_io)
cf_mpi_test(io_h5io test_h5io 1 fast)
cf_mpi_test(io_h5io test_h5io 2 fast)
cf_mpi_test(io_ckpt test_ckpt 1 fast)
cf_mpi_test(io_ckpt test_ckpt 2 fast)
cf_mpi_test(io_ckpt test_ckpt 3 fast)
cf_mpi_test(io_ckpt test_ckpt 4 fast)
unset(CF_TEST_LIBS)
