/* cfpetsc.h: the one boundary between PETSc's error convention and cf_status. */
#ifndef CALMFLOW_CFPETSC_H
#define CALMFLOW_CFPETSC_H

#include <petscsys.h>

#include "calmflow/error.h"

#define CF_PETSC(x)                                                                                \
  do {                                                                                             \
    PetscErrorCode cf_pe_ = (x);                                                                   \
    if (cf_pe_ != 0)                                                                               \
      return cf_err(CF_EPETSC, "PETSc call failed (error %d): %s", (int)cf_pe_, #x);               \
  } while (0)

#endif
