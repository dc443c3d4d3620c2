// Linux declarations that glibc guards with _GNU_SOURCE, which Swift's Glibc module is built
// without. Declared here, resolved against libc at link time.
#include <stdint.h>
#include <sys/types.h>

int fallocate(int fd, int mode, off_t offset, off_t len);

static const int udm_falloc_keep_size = 0x01;
static const int udm_falloc_punch_hole = 0x02;
static const int udm_falloc_zero_range = 0x10;

#if defined(__x86_64__) || defined(__i386__)
static const int udm_o_direct = 040000;
#elif defined(__aarch64__) || defined(__arm__)
static const int udm_o_direct = 0200000;
#else
#error "udm: O_DIRECT value unknown for this architecture"
#endif

// SO_PEERCRED's result (struct ucred).
struct udm_peer_credentials {
    pid_t pid;
    uid_t uid;
    gid_t gid;
};

// posix_spawn flag: start the child in a new session (detached from the terminal).
static const short udm_posix_spawn_setsid = 0x80;

// glibc's heap counters (tests check that pools made at start allocate nothing later).
#include <malloc.h>

// Loop devices (struct loop_config, LOOP_* ioctls) and the block/file-system ioctls whose
// numbers are _IO macros Swift cannot import.
#include <linux/loop.h>
#include <linux/fs.h>
static const unsigned long udm_fifreeze = FIFREEZE;
static const unsigned long udm_fithaw = FITHAW;
static const unsigned long udm_blkflsbuf = BLKFLSBUF;
static const unsigned long udm_blkraget = BLKRAGET;
static const unsigned long udm_blkraset = BLKRASET;

// kcmp(KCMP_FILE): 0 when two processes' descriptors are the same open file (one open,
// shared by fork), as the kernel counts a block device's openers.
#include <unistd.h>
#include <sys/syscall.h>
static inline long udm_same_open_file(pid_t pid1, pid_t pid2, int fd1, int fd2) {
    return syscall(SYS_kcmp, pid1, pid2, 0, fd1, fd2);
}
