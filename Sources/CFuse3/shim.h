// libfuse3's low-level API as Swift sees it. FUSE_USE_VERSION must be set before the include and
// must be 312 (major*100+minor), or fuse_session_loop_mt becomes a macro Swift cannot import.
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
