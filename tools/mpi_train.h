/* metastep train under mpirun (tools/mpi_train.c, built when MPI is found;
 * without MPI, the stubs below make a one-process world and refuse a launch
 * by mpirun).
 *
 * The command joins MPI when a launcher's environment says it runs as one of
 * several ranks (OMPI_COMM_WORLD_SIZE of Open MPI, PMI_SIZE of MPICH and
 * Slurm); there is no flag.  Every rank draws the same meta-batch from the
 * seed, runs its contiguous share of the tasks (metastep_mpi_shard) and
 * applies the same outer update.  Rank 0 alone writes the run directory; the
 * other ranks are quiet and write into a private temporary directory
 * ($TMPDIR/metastep-rankR-XXXXXX) that is removed at the end, except by a
 * killed rank (a resumed run's checkpoint reaches them from rank 0, so no
 * shared file system is needed).
 *
 * Failures: setup failures on any rank (flags, output directory, checkpoint,
 * log) are agreed at two points before the first step, so every rank exits
 * with the worst status and MPI finishes cleanly.  After that, every rank
 * computes the same losses and stops at the same step (divergence); a rank
 * that fails alone (or dies) stops the whole job: it calls MPI_Abort, and
 * mpirun kills the others; a killed rank makes mpirun stop the job.  The
 * checkpoint is replaced atomically (rename), so the last one written stays
 * loadable: --resume continues it with any number of ranks. */
#ifndef METASTEP_TOOLS_MPI_TRAIN_H
#define METASTEP_TOOLS_MPI_TRAIN_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "metastep/metastep.h"

/* Ranks in the launcher's environment (1 when not launched by one). */
static inline int world_env_size(void)
{
    const char *v = getenv("OMPI_COMM_WORLD_SIZE");
    if (!v || !*v)
        v = getenv("PMI_SIZE");
    return v && *v ? atoi(v) : 1;
}

#ifdef MS_HAVE_MPI
/* Join MPI when launched as one of several ranks; 0, or an exit status. */
int world_init(void);
int world_rank(void);
int world_size(void);
/* Ranks on this node (for the default --threads: the cores shared out). */
int world_local_size(void);
/* A setup agreement point: every rank passes its status, all get the worst. */
int world_agree(int rc);
/* Ranks other than 0 get a private run directory (*out; *resume too, with a
 * copy of rank 0's checkpoint from resume_dir) and are made quiet.  0 or an
 * exit status (the same on every rank): 2 for a batched run on several
 * ranks (it cannot be shared bit-identically). */
int world_private_run(const char **out, const char **resume, bool *quiet, bool *force_resume,
                      bool batched);
/* This rank's shard of num_tasks for metastep_options.shard; NULL in a
 * one-process world. */
const metastep_shard *world_shard(int num_tasks);
/* End MPI: agree on what is left to agree, then MPI_Finalize, or MPI_Abort
 * when this rank fails alone in the middle of the run.  Returns rc. */
int world_finish(int rc);
#else
static inline int world_init(void)
{
    if (world_env_size() > 1) {
        fprintf(stderr, "metastep train: launched as one of %d MPI ranks, but this metastep was "
                        "built without MPI (install libopenmpi-dev and rebuild, meson option "
                        "mpi); refusing to run %d independent copies\n",
                world_env_size(), world_env_size());
        return 1;
    }
    return 0;
}
static inline int world_rank(void) { return 0; }
static inline int world_size(void) { return 1; }
static inline int world_local_size(void) { return 1; }
static inline int world_agree(int rc) { return rc; }
static inline int world_private_run(const char **out, const char **resume, bool *quiet,
                                    bool *force_resume, bool batched)
{
    (void)out, (void)resume, (void)quiet, (void)force_resume, (void)batched;
    return 0;
}
static inline const metastep_shard *world_shard(int num_tasks)
{
    (void)num_tasks;
    return NULL;
}
static inline int world_finish(int rc) { return rc; }
#endif
#endif
