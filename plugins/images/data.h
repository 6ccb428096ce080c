/* The images task's data side: labelled image sets read from IDX files
 * (gzipped or not) or from a folder tree of PNG images, resized to one size,
 * and N-way K-shot episodes drawn from them.  No tensors here: plain arrays,
 * so that the parsing can be tested and reused without the model. */
#ifndef METASTEP_PLUGIN_IMAGES_DATA_H
#define METASTEP_PLUGIN_IMAGES_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "metastep/status.h"

typedef enum { RESIZE_BILINEAR, RESIZE_AREA } resize_mode;

/* Images all of one shape (c, size, size), 8 bits per sample, channel-major. */
typedef struct imageset {
    int n, c, h, w;
    uint8_t *pix;   /* n * c * h * w */
    int *label;     /* n labels in [0, nclasses) */
    int nclasses;
    char **names;   /* nclasses class names (folder names, or "0".."9") */
} imageset;

void imageset_free(imageset *s);

/* Read an IDX image file (magic 0x00000803, n x rows x cols unsigned bytes)
 * and its label file (0x00000801, n unsigned bytes), gzipped or plain,
 * resized to size x size with c channels (1, or 3 by replication).
 * MS_ERR_IO for an unreadable file, MS_ERR_FORMAT for a malformed one. */
ms_status idx_load(const char *images, const char *labels, int c, int size, resize_mode mode,
                   imageset *out);

/* Read DIR/<class>/<image>.png: every sub-folder (sorted by name) is a class,
 * every *.png in it (sorted) an image, converted to gray (c = 1) or RGB
 * (c = 3) and resized.  Hidden entries are skipped.  MS_ERR_IO for a missing
 * folder or an unreadable file, MS_ERR_FORMAT for a malformed PNG (naming
 * the file), MS_ERR_INVALID_ARG for a tree without any class. */
ms_status png_tree_load(const char *dir, int c, int size, resize_mode mode, imageset *out);

/* Resize one c-channel image (channel-major) from sh x sw to dh x dw. */
void image_resize(const uint8_t *src, int c, int sh, int sw, uint8_t *dst, int dh, int dw,
                  resize_mode mode);

/* The classes of one side of the split: indices into set->names and, per
 * class, the images of that class. */
typedef struct class_split {
    const imageset *set;
    int nclasses;
    int *cls;     /* nclasses class ids of set */
    int *count;   /* images of each */
    int **index;  /* image indices of each */
} class_split;

/* The classes of set for which keep(class, user) holds. */
ms_status split_make(const imageset *set, bool (*keep)(int cls, int nclasses, void *user),
                     void *user, class_split *out);
void split_free(class_split *s);

/* One episode: ways classes in random label order, then shots + query
 * distinct images of each.  classes[ways] receives the class ids (label j is
 * class classes[j]); support[ways * shots] and query[ways * query] receive
 * image indices, label-major (label j's images at j*shots ..).  Deterministic
 * in `rng` (splitmix64 state, advanced).  MS_ERR_INVALID_ARG with a message
 * when the split has too few classes with enough images; `what` names the
 * split in it. */
ms_status episode_draw(const class_split *s, const char *what, int ways, int shots, int query,
                       uint64_t *rng, int *classes, int *support, int *query_idx);

uint64_t rng_next(uint64_t *state);

#endif
