/* The smallest metastep program: choose a backend, build two tensors,
 * multiply them, print the product.
 *
 *   METASTEP_BACKEND=openblas build/examples/matmul      # choose by environment
 *   build/examples/matmul onednn                         # or by argument
 */
#include <stdio.h>

#include "metastep/metastep.h"

int main(int argc, char **argv)
{
    if (argc > 1 && metastep_set_backend(argv[1]) != MS_OK) {
        const char *msg;
        ms_last_error(&msg);
        fprintf(stderr, "matmul: %s\n", msg);
        return 1;
    }
    ms_scope_push(); /* everything made below is released by the pop */
    const float a[] = {1, 2, 3, 4, 5, 6}, b[] = {0.5f, -1, 2, 0.25f, 1, 1};
    ms_tensor *x = ms_tensor_from_data(MS_F32, 2, (int64_t[]){2, 3}, a);
    ms_tensor *y = ms_tensor_from_data(MS_F32, 2, (int64_t[]){3, 2}, b);
    ms_tensor *z = ms_matmul(x, y);
    if (!z) { /* one check at the end of the expression */
        const char *msg;
        ms_last_error(&msg);
        fprintf(stderr, "matmul: %s\n", msg);
        ms_scope_pop();
        return 1;
    }
    printf("backend %s: %s\n", metastep_current_backend(),
           metastep_backend_description(metastep_current_backend()));
    ms_tensor_fprint(stdout, z);
    printf("\n");
    ms_scope_pop();
    return 0;
}
