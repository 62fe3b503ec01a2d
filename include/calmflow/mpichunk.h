/* mpichunk.h: MPI calls whose element count may exceed what one MPI call takes.
 *
 * MPI counts and displacements are int, so a message of more than INT_MAX elements (8 GiB of
 * floats, less for a large element type) cannot be passed as one count. Every call in calmflow
 * whose count grows with the model, the batch or the data goes through these wrappers, which
 * take size_t counts and split the transfer:
 *  - blocking collectives (allreduce, reduce, bcast): a loop over chunks of at most
 *    cf_mpi_chunk() elements. Reductions act element by element, so the result is the one of a
 *    single call up to MPI choosing another algorithm for another message size (at 1 and 2
 *    ranks: bit-identical);
 *  - point-to-point (send, recv, isend, irecv, sendrecv): one message; beyond the limit its
 *    type is a derived datatype (q blocks of cf_mpi_chunk() elements, then the rest), freed
 *    at once (MPI keeps it alive for a pending request), so a non-blocking call still needs
 *    one request;
 *  - allgather(v) and gatherv with int64 counts and displacements: one native call while every
 *    count fits the limit and every displacement an int, else one chunked broadcast (gather:
 *    one chunked message) per rank.
 * The wrappers return MPI error codes like the calls they replace (check them with CF_MPI).
 *
 * The limit is INT_MAX elements; tests lower it (cf_mpi_set_chunk, or the environment variable
 * CF_MPI_CHUNK, read at the first call) to push small messages through the split paths.
 */
#ifndef CALMFLOW_MPICHUNK_H
#define CALMFLOW_MPICHUNK_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

/* Local. The most elements one MPI call carries (INT_MAX unless lowered for tests). */
size_t cf_mpi_chunk(void);
/* Local. Lower the limit to n >= 1 elements (clamped to INT_MAX); 0 restores the default. For
 * tests: every rank must use the same limit. */
void cf_mpi_set_chunk(size_t n);

/* Collective on comm. MPI_Allreduce / MPI_Reduce / MPI_Bcast of n elements (send may be
 * MPI_IN_PLACE as in MPI). op must act element-wise (the built-in ones do). */
int cf_mpi_allreduce(const void *send, void *recv, size_t n, MPI_Datatype t, MPI_Op op,
                     MPI_Comm comm);
int cf_mpi_reduce(const void *send, void *recv, size_t n, MPI_Datatype t, MPI_Op op, int root,
                  MPI_Comm comm);
int cf_mpi_bcast(void *buf, size_t n, MPI_Datatype t, int root, MPI_Comm comm);

/* Point-to-point on comm with n elements of t. A receive of n elements accepts any message of
 * at most n (as MPI_Recv does); the status is not returned. */
int cf_mpi_send(const void *buf, size_t n, MPI_Datatype t, int dest, int tag, MPI_Comm comm);
int cf_mpi_recv(void *buf, size_t n, MPI_Datatype t, int src, int tag, MPI_Comm comm);
int cf_mpi_isend(const void *buf, size_t n, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
                 MPI_Request *req);
int cf_mpi_irecv(void *buf, size_t n, MPI_Datatype t, int src, int tag, MPI_Comm comm,
                 MPI_Request *req);
int cf_mpi_sendrecv(const void *sbuf, size_t sn, int dest, int stag, void *rbuf, size_t rn, int src,
                    int rtag, MPI_Datatype t, MPI_Comm comm);

/* Collective on comm. Rank r's n elements land at recv + displs[r] (counts[r] == n on rank r;
 * counts and displs in elements, (size of comm) each). send may be MPI_IN_PLACE: this rank's
 * part is already in recv. gatherv: only root's recv, counts and displs are used. */
int cf_mpi_allgatherv(const void *send, size_t n, void *recv, const int64_t *counts,
                      const int64_t *displs, MPI_Datatype t, MPI_Comm comm);
int cf_mpi_gatherv(const void *send, size_t n, void *recv, const int64_t *counts,
                   const int64_t *displs, MPI_Datatype t, int root, MPI_Comm comm);
/* Collective on comm. Every rank's n elements, rank-major into recv (size of comm * n). */
int cf_mpi_allgather(const void *send, size_t n, void *recv, MPI_Datatype t, MPI_Comm comm);

#endif
