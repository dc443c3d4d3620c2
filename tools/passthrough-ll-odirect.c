// tools/bench preloads this into libfuse's example passthrough_ll (LD_PRELOAD) so that it can
// take O_DIRECT writes at all. Its write path hands pwrite libfuse's request buffer, whose
// payload starts 80 bytes into a page, and a file opened with the caller's O_DIRECT refuses an
// unaligned buffer (EINVAL). Such a write goes out from an aligned per-thread copy instead: one
// copy, as udm makes of every write payload. Everything else passes through untouched.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static __thread void *aligned;
static __thread size_t aligned_bytes;

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    static ssize_t (*next)(int, const void *, size_t, off_t);
    if (!next) next = (ssize_t (*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    if (((uintptr_t)buf & 511) && (fcntl(fd, F_GETFL) & O_DIRECT)) {
        if (aligned_bytes < count) {
            free(aligned);
            aligned_bytes = 0;
            if (posix_memalign(&aligned, 4096, count) != 0) {
                aligned = NULL;
                errno = ENOMEM;
                return -1;
            }
            aligned_bytes = count;
        }
        memcpy(aligned, buf, count);
        buf = aligned;
    }
    return next(fd, buf, count, offset);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return pwrite64(fd, buf, count, offset);
}
