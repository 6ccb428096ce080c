/* The metastep command end to end: train/eval outputs, bad flags, Ctrl-C
 * checkpoints and --resume, and (with LEARNING_TEST) that MAML really learns
 * the sine task. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef METASTEP_EXE
#error "METASTEP_EXE must name the metastep executable"
#endif

static char dir[256];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/metastep-train-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

/* Run a shell command; returns its exit status and (when out) its output. */
static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = 0;
    char buf[4096];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, p)) > 0) {
        if (out && n + r < cap) {
            memcpy(out + n, buf, r);
            n += r;
        }
    }
    if (out)
        out[n < cap ? n : cap - 1] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static __attribute__((unused)) bool exists(const char *name)
{
    char path[512];
    struct stat s;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &s) == 0 && s.st_size > 0;
}

/* The held-out losses after 0, 1 and 10 steps from summary.json. */
static __attribute__((unused)) void heldout(double loss[3])
{
    char path[512], text[8192];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    const char *p = strstr(text, "\"loss_after_steps\"");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sscanf(p, "\"loss_after_steps\": {\"0\": %lf, \"1\": %lf, \"10\": %lf", &loss[0],
                            &loss[1], &loss[2]),
                     3);
}

/* A number of summary.json's "heldout" object: name = "accuracy_after_steps"
 * or "accuracy_ci95", the three points 0, 1, 10. */
static __attribute__((unused)) bool heldout_field(const char *text, const char *name, double v[3])
{
    char key[64], fmt[128];
    snprintf(key, sizeof key, "\"%s\"", name);
    const char *p = strstr(text, key);
    snprintf(fmt, sizeof fmt, "%s: {\"0\": %%lf, \"1\": %%lf, \"10\": %%lf", key);
    return p && sscanf(p, fmt, &v[0], &v[1], &v[2]) == 3;
}

static __attribute__((unused)) void read_summary(char *text, size_t cap)
{
    char path[512];
    snprintf(path, sizeof path, "%s/summary.json", dir);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t n = fread(text, 1, cap - 1, f);
    text[n] = '\0';
    fclose(f);
}

#define FMNIST "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"

#ifndef LEARNING_TEST
START_TEST(train_writes_everything)
{
    make_dir();
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd,
             "%s train --task sine --algo fomaml --meta-steps 20 --meta-batch 5 --eval-tasks 10 "
             "--out %s 2>&1", METASTEP_EXE, dir);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    ck_assert_msg(strstr(out, "held-out query MSE"), "output: %s", out);
    const char *files[] = {"log.csv", "params.safetensors", "summary.json", "checkpoint.safetensors",
#ifdef MS_HAVE_PLOT
                           "curves.png", "fits.png",
#endif
                           NULL};
    for (int i = 0; files[i]; i++)
        ck_assert_msg(exists(files[i]), "%s missing", files[i]);
    double l[3];
    heldout(l);
    for (int i = 0; i < 3; i++)
        ck_assert(l[i] > 0 && l[i] < 100);
    /* eval reads the parameters back and reports the same held-out numbers */
    snprintf(cmd, sizeof cmd,
             "%s eval --task sine --params %s/params.safetensors --tasks 10 --json 2>&1",
             METASTEP_EXE, dir);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    double e[3];
    const char *p = strstr(out, "\"loss_after_steps\"");
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sscanf(p, "\"loss_after_steps\": {\"0\": %lf, \"1\": %lf, \"10\": %lf", &e[0],
                            &e[1], &e[2]),
                     3);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(fabs(e[i] - l[i]) <= 1e-5 * l[i], "eval %g vs train %g", e[i], l[i]);
    /* the three algorithms, batched too */
    const char *algos[] = {"maml", "reptile"};
    for (int a = 0; a < 2; a++) {
        snprintf(cmd, sizeof cmd,
                 "%s train --task sine --algo %s --meta-steps 5 --meta-batch 4 --eval-tasks 4 "
                 "--batched --quiet --out %s 2>&1", METASTEP_EXE, algos[a], dir);
        ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: %s", algos[a], out);
    }
}
END_TEST

START_TEST(bad_flags)
{
    const char *bad[] = {"train", "train --task", "train --task sine --algo nope",
                         "train --task sine --meta-batch 0", "train --task sine --inner-lr x",
                         "train --task sine --frobnicate 1", "train --task nosuchtask --quiet",
                         "eval --task sine", "nosuchcommand", NULL};
    char cmd[512], out[8192];
    for (int i = 0; bad[i]; i++) {
        snprintf(cmd, sizeof cmd, "%s %s 2>&1", METASTEP_EXE, bad[i]);
        int st = run(cmd, out, sizeof out);
        ck_assert_msg(st != 0, "'%s' exited 0", bad[i]);
        ck_assert_msg(strstr(out, "metastep"), "'%s' gave no message: %s", bad[i], out);
    }
    snprintf(cmd, sizeof cmd, "%s train --help", METASTEP_EXE);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    const char *flags[] = {"--task", "--algo", "--backend", "--meta-steps", "--meta-batch",
                           "--inner-steps", "--inner-lr", "--outer-lr", "--outer-optim",
                           "--batched", "--seed", "--out", "--resume", "--help", NULL};
    for (int i = 0; flags[i]; i++)
        ck_assert_msg(strstr(out, flags[i]), "--help does not document %s", flags[i]);
}
END_TEST

/* The images task through the command: task options, accuracy with its
 * interval in the output, summary.json, log.csv, episodes.png; eval agrees. */
START_TEST(images_command)
{
    struct stat st;
    if (stat(FMNIST, &st) != 0) {
        printf("skipped: Fashion-MNIST is not installed\n");
        return;
    }
    make_dir();
    char cmd[1024], out[8192], text[8192];
    const char *opts = "--ways 3 --shots 1 --query 2 --filters 4 --inner-lr 0.4";
    snprintf(cmd, sizeof cmd,
             "%s train --task images %s --algo fomaml --meta-steps 2 --meta-batch 2 "
             "--eval-tasks 3 --out %s 2>&1", METASTEP_EXE, opts, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "train: %s", out);
    ck_assert_msg(strstr(out, "held-out query accuracy"), "output: %s", out);
    ck_assert_msg(strstr(out, "+-"), "no confidence interval: %s", out);
    const char *files[] = {"log.csv", "params.safetensors", "summary.json",
#ifdef MS_HAVE_PLOT
                           "curves.png", "episodes.png",
#endif
                           NULL};
    for (int i = 0; files[i]; i++)
        ck_assert_msg(exists(files[i]), "%s missing", files[i]);
    read_summary(text, sizeof text);
    double acc[3], ci[3], l[3];
    heldout(l);
    ck_assert_msg(heldout_field(text, "accuracy_after_steps", acc), "%s", text);
    ck_assert_msg(heldout_field(text, "accuracy_ci95", ci), "%s", text);
    for (int i = 0; i < 3; i++) {
        ck_assert(acc[i] >= 0 && acc[i] <= 1);
        ck_assert(ci[i] >= 0 && ci[i] <= 1);
        ck_assert(l[i] > 0 && isfinite(l[i]));
    }
    ck_assert_ptr_nonnull(strstr(text, "\"task_options\": {\"ways\": \"3\""));
    snprintf(cmd, sizeof cmd, "head -1 %s/log.csv", dir);
    run(cmd, out, sizeof out);
    ck_assert_msg(strstr(out, "heldout_acc_0,heldout_acc_1"), "log.csv header: %s", out);
    /* eval with the same task options reports the same numbers */
    snprintf(cmd, sizeof cmd, "%s eval --task images %s --params %s/params.safetensors "
             "--tasks 3 --json 2>&1", METASTEP_EXE, opts, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "eval: %s", out);
    double e[3], eci[3];
    ck_assert_msg(heldout_field(out, "accuracy_after_steps", e), "%s", out);
    ck_assert_msg(heldout_field(out, "accuracy_ci95", eci), "%s", out);
    for (int i = 0; i < 3; i++) {
        ck_assert_double_eq_tol(e[i], acc[i], 1e-9);
        ck_assert_double_eq_tol(eci[i], ci[i], 1e-5);
    }
    snprintf(cmd, sizeof cmd, "%s eval --task images %s --params %s/params.safetensors "
             "--tasks 3 2>&1", METASTEP_EXE, opts, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "eval: %s", out);
    ck_assert_msg(strstr(out, "95% CI"), "eval: %s", out);
    /* other options than the training's: the parameters do not fit */
    snprintf(cmd, sizeof cmd, "%s eval --task images --ways 4 --filters 4 --params "
             "%s/params.safetensors --tasks 2 2>&1", METASTEP_EXE, dir);
    ck_assert_msg(run(cmd, out, sizeof out) != 0, "eval with 4 ways of a 3-way model: %s", out);
}
END_TEST

/* Bad task options: rejected with a message naming the option. */
START_TEST(images_bad_flags)
{
    const char *bad[][2] = {
        {"--ways 1", "ways"}, {"--ways x", "ways"}, {"--filters 0", "filters"},
        {"--query -1", "query"}, {"--channels 2", "channels"}, {"--size 4", "size"},
        {"--resize cubic", "resize"}, {"--split 1.5", "split"}, {"--bogus 1", "bogus"},
        {"--shots 0", "shots"}, {"--data /nonexistent/fmnist", "/nonexistent/fmnist"},
        {"--data /nonexistent/file --labels /nonexistent/labels", "/nonexistent/file"},
    };
    char cmd[1024], out[8192];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        make_dir();
        snprintf(cmd, sizeof cmd, "%s train --task images %s --meta-steps 1 --meta-batch 1 "
                 "--filters 2 --quiet --out %s 2>&1", METASTEP_EXE, bad[i][0], dir);
        int st = run(cmd, out, sizeof out);
        ck_assert_msg(st != 0, "'%s' exited 0", bad[i][0]);
        ck_assert_msg(strstr(out, "metastep") && strstr(out, bad[i][1]),
                      "'%s' gave no clear message: %s", bad[i][0], out);
    }
    /* sine takes no task options */
    snprintf(cmd, sizeof cmd, "%s train --task sine --ways 5 --quiet 2>&1", METASTEP_EXE);
    ck_assert_int_eq(run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "unknown option '--ways'"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s eval --task sine --params x --ways 5 2>&1", METASTEP_EXE);
    ck_assert_int_eq(run(cmd, out, sizeof out), 2);
    /* --help documents the images task */
    snprintf(cmd, sizeof cmd, "%s train --help", METASTEP_EXE);
    ck_assert_int_eq(run(cmd, out, sizeof out), 0);
    const char *flags[] = {"--ways", "--shots", "--query", "--data", "--filters", "--labels",
                           "--channels", "--size", "--resize", "disjoint", "0,2,4,6,8",
                           "1,3,5,7,9", "episodes.png", NULL};
    for (int i = 0; flags[i]; i++)
        ck_assert_msg(strstr(out, flags[i]), "--help does not document %s", flags[i]);
}
END_TEST

/* A task plugin with a 1.0 table: no options, an accuracy without interval. */
START_TEST(task_abi_1_0)
{
    make_dir();
    char cmd[1024], out[8192], text[8192];
    snprintf(cmd, sizeof cmd, "%s train --task %s --meta-steps 2 --meta-batch 2 --eval-tasks 2 "
             "--out %s 2>&1", METASTEP_EXE, TASK_V10, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "train: %s", out);
    ck_assert_msg(strstr(out, "accuracy") && !strstr(out, "+-"), "%s", out);
    read_summary(text, sizeof text);
    double acc[3];
    ck_assert_msg(heldout_field(text, "accuracy_after_steps", acc) && acc[1] == 0.5, "%s", text);
    ck_assert_msg(!strstr(text, "accuracy_ci95"), "%s", text);
    snprintf(cmd, sizeof cmd, "%s train --task %s --meta-steps 1 --ways 2 --out %s 2>&1",
             METASTEP_EXE, TASK_V10, dir);
    ck_assert_int_eq(run(cmd, out, sizeof out), 2);
    ck_assert_msg(strstr(out, "takes no options"), "%s", out);
    snprintf(cmd, sizeof cmd, "%s eval --task %s --params %s/params.safetensors --tasks 2 --json "
             "2>&1", METASTEP_EXE, TASK_V10, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "eval: %s", out);
    ck_assert_msg(strstr(out, "accuracy_after_steps") && !strstr(out, "ci95"), "%s", out);
}
END_TEST

START_TEST(interrupt_and_resume)
{
    make_dir();
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        char out[600];
        snprintf(out, sizeof out, "%s", dir);
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(METASTEP_EXE, "metastep", "train", "--task", "sine", "--meta-steps", "1000000",
              "--meta-batch", "2", "--eval-every", "1000000", "--out", out, (char *)NULL);
        _exit(127);
    }
    /* wait until it is training (log.csv has a step), then Ctrl-C */
    char log[512];
    snprintf(log, sizeof log, "%s/log.csv", dir);
    for (int i = 0; i < 600; i++) {
        struct stat s;
        if (stat(log, &s) == 0 && s.st_size > 80)
            break;
        usleep(50000);
    }
    kill(pid, SIGINT);
    int st;
    waitpid(pid, &st, 0);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 130);
    ck_assert(exists("checkpoint.safetensors"));
    ck_assert(exists("params.safetensors"));
    /* resume and finish: the log continues where it stopped */
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "grep -c . %s", log);
    run(cmd, out, sizeof out);
    long lines_before = atol(out);
    snprintf(cmd, sizeof cmd,
             "%s train --task sine --meta-steps %ld --meta-batch 2 --eval-tasks 4 --resume %s "
             "--quiet 2>&1", METASTEP_EXE, lines_before + 3, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "resume: %s", out);
    snprintf(cmd, sizeof cmd, "tail -1 %s | cut -d, -f1", log);
    run(cmd, out, sizeof out);
    ck_assert_int_eq(atol(out), lines_before + 3);
}
END_TEST

#elif defined(LEARNING_IMAGES)
/* Few-shot learning is real: a short first-order MAML run on Fashion-MNIST
 * 5-way 1-shot (meta-trained on classes 0,2,4,6,8, evaluated on the unseen
 * classes 1,3,5,7,9): after adaptation the held-out accuracy is clearly
 * above chance (20%) and above the unadapted accuracy. */
START_TEST(fomaml_learns_fashion_mnist)
{
    struct stat st;
    if (stat(FMNIST, &st) != 0) {
        printf("skipped: Fashion-MNIST is not installed\n");
        return;
    }
    make_dir();
    char cmd[1024], out[8192], text[8192];
    snprintf(cmd, sizeof cmd, "%s train --task images --algo fomaml --ways 5 --shots 1 "
             "--query 5 --filters 16 --meta-steps 300 --meta-batch 4 --inner-lr 0.4 "
             "--eval-tasks 100 --eval-every 1000 --quiet --out %s 2>&1", METASTEP_EXE, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "train: %s", out);
    read_summary(text, sizeof text);
    double acc[3], ci[3];
    ck_assert_msg(heldout_field(text, "accuracy_after_steps", acc), "%s", text);
    ck_assert_msg(heldout_field(text, "accuracy_ci95", ci), "%s", text);
    printf("held-out 5-way 1-shot accuracy: %.1f%% +- %.1f%% unadapted, %.1f%% +- %.1f%% after "
           "1 step, %.1f%% +- %.1f%% after 10 steps\n", 100 * acc[0], 100 * ci[0], 100 * acc[1],
           100 * ci[1], 100 * acc[2], 100 * ci[2]);
    ck_assert_msg(acc[2] > 0.4, "after 10 steps %.3f", acc[2]);
    ck_assert_msg(acc[2] - ci[2] > 0.2 + 0.1, "after 10 steps %.3f +- %.3f", acc[2], ci[2]);
    ck_assert_msg(acc[2] > acc[0] + 0.1, "after 10 steps %.3f, unadapted %.3f", acc[2], acc[0]);
    ck_assert_msg(acc[1] > acc[0], "after 1 step %.3f, unadapted %.3f", acc[1], acc[0]);
}
END_TEST
#else
/* 2,000 meta-steps of MAML on sine: the held-out query MSE after one step is
 * below 1.2 and below a third of the unadapted MSE (PyTorch with the same
 * setting: about 0.86 after one step, 0.46 after ten, from about 3.4). */
START_TEST(maml_learns_sine)
{
    make_dir();
    char cmd[1024], out[8192];
    snprintf(cmd, sizeof cmd, "%s train --task sine --algo maml --meta-steps 2000 --quiet --out %s 2>&1",
             METASTEP_EXE, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "train: %s", out);
    double l[3];
    heldout(l);
    printf("held-out MSE: %.4f unadapted, %.4f after 1 step, %.4f after 10 steps\n", l[0], l[1],
           l[2]);
    ck_assert_msg(l[1] < 1.2, "after one step %.4f", l[1]);
    ck_assert_msg(l[1] < l[0] / 3, "after one step %.4f, unadapted %.4f", l[1], l[0]);
    ck_assert(l[2] < l[1]);
}
END_TEST
#endif

int main(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("command");
    tcase_set_timeout(tc, 600);
#if defined(LEARNING_IMAGES)
    tcase_set_timeout(tc, 1800);
    tcase_add_test(tc, fomaml_learns_fashion_mnist);
#elif defined(LEARNING_TEST)
    tcase_add_test(tc, maml_learns_sine);
#else
    tcase_add_test(tc, images_command);
    tcase_add_test(tc, images_bad_flags);
    tcase_add_test(tc, task_abi_1_0);
    tcase_add_test(tc, train_writes_everything);
    tcase_add_test(tc, bad_flags);
    tcase_add_test(tc, interrupt_and_resume);
#endif
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
