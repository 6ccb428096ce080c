/* metastep train / eval with the variants beyond Ivy (docs/variants.md):
 * --algo metasgd, --algo mamlpp (--msl-anneal, --first-order-until),
 * --adapt head (ANIL).  Checkpoints carry the learned rates: a run resumed
 * half-way ends with the same bytes as one run straight through; the
 * command's evaluation with learned rates equal to --inner-lr reproduces the
 * plugin's own evaluation; the flags that make no sense are refused. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef METASTEP_EXE
#error "METASTEP_EXE must name the metastep executable"
#endif

#define FMNIST "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"

static char dir[256];

static int run(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = 0, r;
    char buf[4096];
    while ((r = fread(buf, 1, sizeof buf, p)) > 0)
        if (out && n + r < cap) {
            memcpy(out + n, buf, r);
            n += r;
        }
    if (out)
        out[n < cap ? n : cap - 1] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/metastep-variants-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void slurp(const char *path, char *text, size_t cap)
{
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s", path);
    size_t n = fread(text, 1, cap - 1, f);
    for (size_t i = 0; i < n; i++) /* safetensors: binary length and data */
        if (!text[i])
            text[i] = ' ';
    text[n] = '\0';
    fclose(f);
}

/* The "heldout" part of DIR/NAME/summary.json. */
static void heldout(const char *name, char *h, size_t cap)
{
    char path[512], text[8192];
    snprintf(path, sizeof path, "%s/%s/summary.json", dir, name);
    slurp(path, text, sizeof text);
    const char *p = strstr(text, "\"heldout\"");
    ck_assert_ptr_nonnull(p);
    snprintf(h, cap, "%s", p);
}

#define TRAIN METASTEP_EXE " train --task sine --meta-batch 3 --eval-every 1000 --eval-tasks 5 " \
                           "--quiet --threads 2 "

static const char *const VARIANTS[] = {
    "--algo metasgd",
    "--algo metasgd --batched",
    "--algo mamlpp --inner-steps 2 --msl-anneal 4 --first-order-until 3",
    "--algo maml --adapt head --inner-steps 2",
    "--algo fomaml --adapt head --msl-anneal 3 --inner-steps 2",
    "--algo mamlpp --adapt head --inner-steps 3 --msl-anneal 2 --batched",
};

/* Six meta-steps straight, or three and a resume to six: the same bytes. */
START_TEST(resume_exact)
{
    make_dir();
    char cmd[2048], out[8192], a[512], b[512];
    const char *flags = VARIANTS[_i];
    snprintf(cmd, sizeof cmd, TRAIN "%s --meta-steps 6 --out %s/straight 2>&1", flags, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    snprintf(cmd, sizeof cmd, TRAIN "%s --meta-steps 3 --out %s/halves 2>&1", flags, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    snprintf(cmd, sizeof cmd, TRAIN "%s --meta-steps 6 --resume %s/halves 2>&1", flags, dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    snprintf(a, sizeof a, "%s/straight/params.safetensors", dir);
    snprintf(b, sizeof b, "%s/halves/params.safetensors", dir);
    snprintf(cmd, sizeof cmd, "cmp %s %s 2>&1", a, b);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: resumed run differs: %s", flags, out);
    /* learned rates are parameters, and in the checkpoint */
    bool rates = strstr(flags, "metasgd") || strstr(flags, "mamlpp");
    char text[4096];
    slurp(a, text, sizeof text);
    ck_assert_msg((strstr(text, "inner_lr/l3/w") != NULL) == rates, "%s: rates in params", flags);
    ck_assert_msg((strstr(text, "inner_lr/l1/w") != NULL) == (rates && !strstr(flags, "head")),
                  "%s: rates of the body", flags);
    snprintf(b, sizeof b, "%s/halves/checkpoint.safetensors", dir);
    slurp(b, text, sizeof text);
    ck_assert_msg((strstr(text, "params/inner_lr/l3/w") != NULL) == rates, "%s: checkpoint", flags);
    ck_assert_msg((strstr(text, "optim/m/inner_lr/l3/w") != NULL) == rates, "%s: optimizer state",
                  flags);
    /* a resume with other variant flags is refused, naming them */
    snprintf(cmd, sizeof cmd, TRAIN "--algo maml --meta-steps 7 --resume %s/halves 2>&1", dir);
    ck_assert_int_eq(run(cmd, out, sizeof out), 2);
    /* metastep eval reads the rates from the parameters file */
    snprintf(cmd, sizeof cmd, METASTEP_EXE " eval --task sine --params %s --tasks 4 %s --json 2>&1",
             a, strstr(flags, "head") ? "--adapt head" : "");
    ck_assert_msg(run(cmd, out, sizeof out) == 0 && strstr(out, "loss_after_steps"), "%s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run(cmd, NULL, 0);
}
END_TEST

/* With learned rates equal to --inner-lr everywhere (no meta-step yet), the
 * command's evaluation adapts exactly as the plugin's: the same numbers. */
START_TEST(rates_at_init_evaluate_as_maml)
{
    make_dir();
    char cmd[2048], out[8192], h0[4096], h1[4096], h2[4096];
    const char *task = _i ? "--task images --ways 3 --shots 1 --query 2 --filters 4 --size 16"
                          : "--task sine";
    if (_i && access(FMNIST, R_OK) != 0)
        return; /* no Fashion-MNIST */
    const char *algos[3] = {"maml", "metasgd", "mamlpp --inner-steps 2"};
    for (int a = 0; a < 3; a++) {
        snprintf(cmd, sizeof cmd, METASTEP_EXE " train %s --algo %s --meta-steps 0 --eval-tasks 6 "
                 "--inner-lr 0.1 --quiet --out %s/a%d 2>&1", task, algos[a], dir, a);
        ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s: %s", cmd, out);
    }
    heldout("a0", h0, sizeof h0);
    heldout("a1", h1, sizeof h1);
    heldout("a2", h2, sizeof h2);
    ck_assert_msg(!strcmp(h0, h1) && !strcmp(h0, h2), "maml %s\nmetasgd %s\nmamlpp %s", h0, h1, h2);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run(cmd, NULL, 0);
}
END_TEST

/* The images task: every variant runs, ANIL's head is head/w, head/b. */
START_TEST(images_variants)
{
    if (access(FMNIST, R_OK) != 0)
        return;
    make_dir();
    char cmd[2048], out[8192], path[512], text[4096];
    snprintf(cmd, sizeof cmd, METASTEP_EXE " train --task images --ways 3 --shots 1 --query 2 "
             "--filters 4 --size 16 --meta-batch 2 --meta-steps 2 --eval-tasks 3 --inner-lr 0.3 "
             "--algo metasgd --adapt head --quiet --out %s/i 2>&1", dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s", out);
    snprintf(path, sizeof path, "%s/i/params.safetensors", dir);
    slurp(path, text, sizeof text);
    ck_assert(strstr(text, "inner_lr/head/w") && strstr(text, "inner_lr/head/b"));
    ck_assert(!strstr(text, "inner_lr/block1"));
    snprintf(path, sizeof path, "%s/i/summary.json", dir);
    slurp(path, text, sizeof text);
    ck_assert(strstr(text, "accuracy_ci95") && strstr(text, "\"adapt\": \"head\""));
    snprintf(cmd, sizeof cmd, METASTEP_EXE " train --task images --ways 3 --shots 1 --query 2 "
             "--filters 4 --size 16 --meta-batch 2 --meta-steps 2 --eval-tasks 3 --inner-lr 0.3 "
             "--algo mamlpp --inner-steps 2 --quiet --out %s/j 2>&1", dir);
    ck_assert_msg(run(cmd, out, sizeof out) == 0, "%s", out);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    run(cmd, NULL, 0);
}
END_TEST

START_TEST(bad_flags)
{
    const char *bad[] = {"--algo reptile --adapt head", "--algo reptile --msl-anneal 3",
                         "--algo fomaml --first-order-until 3", "--algo mamlpp --inner-steps 0",
                         "--adapt some", "--msl-anneal -1", "--algo metasgdx"};
    char cmd[1024], out[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, METASTEP_EXE " train --task sine %s --out /nonexistent/x 2>&1",
                 bad[i]);
        ck_assert_msg(run(cmd, out, sizeof out) == 2, "%s: %s", bad[i], out);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("train_variants");
    TCase *tc = tcase_create("variants");
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, resume_exact, 0, (int)(sizeof VARIANTS / sizeof VARIANTS[0]));
    tcase_add_loop_test(tc, rates_at_init_evaluate_as_maml, 0, 2);
    tcase_add_test(tc, images_variants);
    tcase_add_test(tc, bad_flags);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
