/* metastep train under mpirun: see mpi_train.h. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metastep/mpi.h"
#include "mpi_train.h"
#include "util.h"

#define AGREEMENTS 2 /* setup agreement points of cmd_train before the first step */

static struct {
    bool joined;
    int rank, size, local;
    int agreed;
    bool setup_failed; /* an agreement found a failure: every rank ends alike */
    char dir[4096]; /* the private run directory of a rank > 0 */
    metastep_mpi_shard shard;
} w = {.size = 1, .local = 1};

int world_rank(void) { return w.rank; }
int world_size(void) { return w.size; }
int world_local_size(void) { return w.local; }

int world_init(void)
{
    if (world_env_size() <= 1)
        return 0;
    int provided = 0;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "metastep train: MPI_Init failed\n");
        return 1;
    }
    w.joined = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &w.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &w.size);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_size(node, &w.local);
        MPI_Comm_free(&node);
    }
    if (w.rank != 0) /* results and progress are rank 0's to print */
        if (!freopen("/dev/null", "w", stdout))
            return 1;
    return 0;
}

int world_agree(int rc)
{
    if (!w.joined)
        return rc;
    int worst = rc;
    w.agreed++;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (worst != 0)
        w.setup_failed = true;
    return worst;
}

/* Rank 0's checkpoint file to every rank: its size (-1: unreadable), then
 * its bytes. */
static int share_checkpoint(const char *resume, const char *dir)
{
    char path[4200];
    long long n = -1;
    char *buf = NULL;
    if (w.rank == 0) {
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", resume);
        FILE *f = fopen(path, "rb");
        if (f && fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
            (buf = malloc((size_t)n + 1)) && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            /* read */
        } else {
            fprintf(stderr, "metastep train: cannot read %s: %s\n", path, strerror(errno));
            n = -1;
        }
        if (f)
            fclose(f);
    }
    MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
    if (n < 0) {
        free(buf);
        return 1;
    }
    if (w.rank != 0 && !(buf = malloc((size_t)n + 1)))
        n = -1; /* still take part in the broadcasts below */
    for (long long off = 0; off < n; off += INT_MAX / 2) {
        long long len = n - off < INT_MAX / 2 ? n - off : INT_MAX / 2;
        MPI_Bcast(buf ? buf + off : NULL, buf ? (int)len : 0, MPI_BYTE, 0, MPI_COMM_WORLD);
    }
    int rc = 0;
    if (w.rank != 0) {
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
        rc = buf && util_write_atomic(path, buf, (size_t)n) ? 0 : 1;
        if (rc)
            fprintf(stderr, "metastep train: rank %d cannot write %s\n", w.rank, path);
    }
    free(buf);
    return rc;
}

int world_private_run(const char **out, const char **resume, bool *quiet, bool *force_resume,
                      bool batched)
{
    if (!w.joined)
        return 0;
    int rc = 0;
    if (batched && w.size > 1) {
        if (w.rank == 0)
            fprintf(stderr, "metastep train: --batched cannot be shared among MPI ranks: a batched "
                            "step sums over the task axis in the backend's order, which no split "
                            "reproduces bit for bit; run unbatched (the default) under mpirun\n");
        rc = 2;
    } else if (w.rank != 0) {
        const char *tmp = getenv("TMPDIR");
        snprintf(w.dir, sizeof w.dir, "%s/metastep-rank%d-XXXXXX", tmp && *tmp ? tmp : "/tmp",
                 w.rank);
        if (!mkdtemp(w.dir)) {
            fprintf(stderr, "metastep train: rank %d cannot create %s: %s\n", w.rank, w.dir,
                    strerror(errno));
            w.dir[0] = '\0';
            rc = 1;
        }
    }
    if ((rc = world_agree(rc)) != 0)
        return rc;
    if (*resume && share_checkpoint(*resume, w.dir) != 0)
        return 1;
    if (w.rank != 0) {
        *out = w.dir;
        if (*resume)
            *resume = w.dir;
        *quiet = true;
        *force_resume = true; /* rank 0 checks the flags against the checkpoint */
    }
    return 0;
}

const metastep_shard *world_shard(int num_tasks)
{
    if (!w.joined || w.size == 1)
        return NULL;
    if (w.shard.shard.exchange && w.shard.shard.first + w.shard.shard.count <= num_tasks &&
        w.shard.size == w.size) {
        int first, count;
        metastep_mpi_share(num_tasks, w.size, w.rank, &first, &count);
        if (first == w.shard.shard.first && count == w.shard.shard.count)
            return &w.shard.shard;
    }
    return metastep_mpi_shard_init(&w.shard, MPI_COMM_WORLD, num_tasks) == MS_OK ? &w.shard.shard
                                                                                 : NULL;
}

static void remove_private_dir(void)
{
    if (!w.dir[0])
        return;
    DIR *d = opendir(w.dir);
    struct dirent *e;
    char path[4400];
    while (d && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof path, "%s/%s", w.dir, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(w.dir);
    w.dir[0] = '\0';
}

int world_finish(int rc)
{
    if (!w.joined)
        return rc;
    while (w.agreed < AGREEMENTS) /* a setup failure: the others wait to agree */
        rc = world_agree(rc);
    remove_private_dir();
    /* After the setup every rank meets the same ends (done, diverged,
     * a file rank 0 could not write after the last step); anything else
     * leaves the others waiting in a step's exchange: stop the job. */
    if (rc != 0 && rc != 3 && rc != 4 && !w.setup_failed) {
        fprintf(stderr, "metastep train: rank %d of %d stops the MPI job (exit status %d)\n",
                w.rank, w.size, rc);
        MPI_Abort(MPI_COMM_WORLD, rc);
    }
    MPI_Finalize();
    return rc;
}
