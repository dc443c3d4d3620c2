// libnbd's client API as Swift sees it, and eventfd (which Glibc's Swift module hides), by which
// other threads wake a connection's poll thread.
#include <libnbd.h>
#include <sys/eventfd.h>
