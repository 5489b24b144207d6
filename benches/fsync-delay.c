/* An LD_PRELOAD shim for benchmarks (benches/audit-seal.sh): every fsync
 * and fdatasync of the process first sleeps KAKEHASHI_FSYNC_DELAY_US
 * microseconds, standing in for a slower disk (issue 18 asks for "2 ms
 * added to every fsync"). Never for production. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void delay(void) {
    static long us = -1;
    if (us < 0) {
        const char *v = getenv("KAKEHASHI_FSYNC_DELAY_US");
        us = v ? atol(v) : 0;
    }
    if (us > 0) {
        struct timespec t = { us / 1000000, (us % 1000000) * 1000 };
        nanosleep(&t, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay();
    return real(fd);
}
