// liburing, and the FUSE-over-io_uring part of the kernel's FUSE protocol (include/uapi/linux/fuse.h,
// protocol 7.42, Linux 6.14 and later), which Debian 12's linux-libc-dev predates. Declared here
// under udm_ names so they cannot clash with a newer <linux/fuse.h>.
// liburing.h defines _GNU_SOURCE, which changes glibc's own headers (fd_set, enum __rusage_who);
// clang then refuses them as different from the copies in CFuse3 and Glibc. Reading
// <features.h> first fixes glibc's feature set as every other module has it.
#include <features.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/uio.h>

// The soft RLIMIT_MEMLOCK in bytes (RLIM_INFINITY when unlimited), for the error message.
static inline uint64_t udm_memlock_limit(void) {
    struct rlimit limit;
    return getrlimit(RLIMIT_MEMLOCK, &limit) == 0 ? (uint64_t)limit.rlim_cur : 0;
}

// INIT flag: the server takes requests over io_uring. Bit 41, so it travels in flags2 (bit 9),
// which the kernel reads only when flags carries FUSE_INIT_EXT (bit 30).
static const uint64_t udm_fuse_over_io_uring = 1ULL << 41;
static const uint32_t udm_fuse_init_ext = 1U << 30;
static const uint32_t udm_fuse_max_pages = 1U << 22;
static const uint32_t udm_fuse_opcode_init = 26;

// Sizes of the first two parts of an entry's header buffer.
#define UDM_FUSE_URING_IN_OUT_HEADER_SZ 128
#define UDM_FUSE_URING_OP_IN_OUT_SZ 128

// Per-request fields of an entry, both directions.
struct udm_fuse_uring_ent_in_out {
    uint64_t flags;
    // The request's unique: the commit id its reply is committed with.
    uint64_t commit_id;
    // Bytes used in the payload buffer (request in, reply out).
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

// iov[0] of an entry. in_out holds struct fuse_in_header on fetch and struct fuse_out_header on
// commit; op_in the request's first argument (its per-opcode header), if it has one.
struct udm_fuse_uring_req_header {
    char in_out[UDM_FUSE_URING_IN_OUT_HEADER_SZ];
    char op_in[UDM_FUSE_URING_OP_IN_OUT_SZ];
    struct udm_fuse_uring_ent_in_out ring_ent_in_out;
};

// cmd_op of the IORING_OP_URING_CMD SQE.
static const uint32_t udm_fuse_io_uring_cmd_register = 1;
static const uint32_t udm_fuse_io_uring_cmd_commit_and_fetch = 2;

// In the SQE's command area (128-byte SQEs only).
struct udm_fuse_uring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

// Fills a 128-byte SQE with a FUSE ring command on the /dev/fuse descriptor: `iov` is the entry's
// [header, payload] pair (read by the kernel at REGISTER), `commit_id` the answered request's
// unique (COMMIT_AND_FETCH).
static inline void udm_prep_fuse_uring_cmd(struct io_uring_sqe *sqe, int fuse_fd, uint32_t cmd_op,
                                           const struct iovec *iov, uint16_t qid, uint64_t commit_id,
                                           uint64_t user_data) {
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fuse_fd;
    sqe->addr = (uint64_t)(uintptr_t)iov;
    sqe->len = 2;
    sqe->cmd_op = cmd_op;
    struct udm_fuse_uring_cmd_req *req = (struct udm_fuse_uring_cmd_req *)sqe->cmd;
    req->commit_id = commit_id;
    req->qid = qid;
    sqe->user_data = user_data;
}

// An 8-byte read of an eventfd, the wake-up from other threads.
static inline void udm_prep_eventfd_read(struct io_uring_sqe *sqe, int fd, uint64_t *value, uint64_t user_data) {
    io_uring_prep_read(sqe, fd, value, sizeof(*value), 0);
    sqe->user_data = user_data;
}
