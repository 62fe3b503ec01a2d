/* exitcodes.h: the process exit statuses calmflow uses, for job scripts to act on.
 *
 * docs/exit-codes.md is the user-facing table (what each means under mpiexec and Slurm, what a
 * batch script should do). Codes stay below 64 or in the sysexits range, away from the shell's
 * 126/127 and 128+signal, so a Slurm "ExitCode 3:0" is unambiguous.
 */
#ifndef CALMFLOW_EXITCODES_H
#define CALMFLOW_EXITCODES_H

#define CF_EXIT_OK 0       /* finished */
#define CF_EXIT_ERROR 1    /* an error was reported (one "calmflow: error:" line) */
#define CF_EXIT_USAGE 2    /* no command or an unknown command; nothing was run */
#define CF_EXIT_WATCHDOG 3 /* -par_timeout: a rank was stuck in one communication too long */
#define CF_EXIT_NUMERIC 4  /* a numerical failure (CF_ENUM): NaN/Inf in training, ... */
#define CF_EXIT_REQUEUE                                                                            \
  75 /* checkpoint committed on a preemption/time-limit signal: requeue                            \
        (EX_TEMPFAIL from sysexits.h) */

#endif
