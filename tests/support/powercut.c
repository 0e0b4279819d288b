/* powercut.so: LD_PRELOAD write tracking, so a test can cut the power of a process.
 *
 * For every file opened under $POWERCUT_DIR the library logs each write's byte range (and
 * each truncation) to <file>.dirty. At fsync/fdatasync it copies those ranges from the file
 * into <file>.durable, sets that image's size, and empties the log: the image is the file as
 * a power cut would leave it if every write not yet synced were lost. After SIGKILL,
 * tests/support/powercut.py replaces each file by its image, plus (torn mode) a random
 * subset of the logged sectors, and deletes files never synced.
 *
 * Why this and not FUSE: no libfuse or FUSE binding is installed here or on a fresh Debian
 * with the Makefile's packages, and mounting needs privileges a CI container may lack; a C
 * compiler is there. Why not SQLite's VFS: the gateway uses Python's sqlite3, which cannot
 * load a VFS written in Python. The calls wrapped are those libsqlite3 and Python's os
 * module import (nm -D): open/open64/openat, write, pwrite/pwrite64, ftruncate/64,
 * fsync, fdatasync, close, unlink. Writes through mmap (SQLite's -shm) are not seen: the
 * harness deletes -shm at a cut, and SQLite rebuilds it from the WAL.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FD 4096

static char *paths[MAX_FD];
static int dirty_fd[MAX_FD];

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_unlink)(const char *);

static void init(void) {
    if (real_write) return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_close = dlsym(RTLD_NEXT, "close");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
}

static const char *tracked_dir(void) {
    const char *d = getenv("POWERCUT_DIR");
    return (d && *d) ? d : NULL;
}

static int under_dir(const char *path) {
    const char *d = tracked_dir();
    size_t n;
    if (!d || path[0] != '/') return 0;
    n = strlen(d);
    if (strncmp(path, d, n) != 0 || path[n] != '/') return 0;
    n = strlen(path);
    /* our own files are not tracked */
    return !(n > 6 && strcmp(path + n - 6, ".dirty") == 0) && !(n > 8 && strcmp(path + n - 8, ".durable") == 0);
}

static void log_line(int fd, const char *fmt, long long a, long long b) {
    char line[64];
    int n = snprintf(line, sizeof line, fmt, a, b);
    if (dirty_fd[fd] > 0) real_write(dirty_fd[fd], line, (size_t)n);
}

static void track(int fd, const char *path, int flags) {
    char side[PATH_MAX + 16];
    if (fd < 0 || fd >= MAX_FD || !under_dir(path)) return;
    free(paths[fd]);
    paths[fd] = strdup(path);
    snprintf(side, sizeof side, "%s.dirty", path);
    dirty_fd[fd] = real_open(side, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (flags & O_TRUNC) log_line(fd, "T %lld %lld\n", 0, 0);
}

static int open_flags_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap; int mode, fd;
    init();
    va_start(ap, flags); mode = open_flags_mode(flags, ap); va_end(ap);
    fd = real_open(path, flags, mode);
    track(fd, path, flags);
    return fd;
}

int open64(const char *path, int flags, ...) {
    va_list ap; int mode, fd;
    init();
    va_start(ap, flags); mode = open_flags_mode(flags, ap); va_end(ap);
    fd = real_open64(path, flags, mode);
    track(fd, path, flags);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; int mode, fd;
    init();
    va_start(ap, flags); mode = open_flags_mode(flags, ap); va_end(ap);
    fd = real_openat(dirfd, path, flags, mode);
    track(fd, path, flags); /* absolute paths only (under_dir) */
    return fd;
}

static int is_tracked(int fd) { return fd >= 0 && fd < MAX_FD && paths[fd] != NULL; }

ssize_t write(int fd, const void *buf, size_t n) {
    off_t at = 0; ssize_t k;
    init();
    if (is_tracked(fd)) {
        if (fcntl(fd, F_GETFL) & O_APPEND) {
            struct stat st;
            at = fstat(fd, &st) == 0 ? st.st_size : 0;
        } else {
            at = lseek(fd, 0, SEEK_CUR);
        }
    }
    k = real_write(fd, buf, n);
    if (k > 0 && is_tracked(fd)) log_line(fd, "W %lld %lld\n", (long long)at, (long long)k);
    return k;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    ssize_t k;
    init();
    k = real_pwrite(fd, buf, n, at);
    if (k > 0 && is_tracked(fd)) log_line(fd, "W %lld %lld\n", (long long)at, (long long)k);
    return k;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t at) {
    ssize_t k;
    init();
    k = real_pwrite64(fd, buf, n, at);
    if (k > 0 && is_tracked(fd)) log_line(fd, "W %lld %lld\n", (long long)at, (long long)k);
    return k;
}

int ftruncate(int fd, off_t len) {
    int r;
    init();
    r = real_ftruncate(fd, len);
    if (r == 0 && is_tracked(fd)) log_line(fd, "T %lld %lld\n", (long long)len, 0);
    return r;
}

int ftruncate64(int fd, off_t len) {
    int r;
    init();
    r = real_ftruncate64(fd, len);
    if (r == 0 && is_tracked(fd)) log_line(fd, "T %lld %lld\n", (long long)len, 0);
    return r;
}

/* The file's logged ranges go into its image; the image takes the file's size. */
static void make_durable(int fd) {
    char side[PATH_MAX + 16], *text = NULL, *line, *save = NULL, buf[65536];
    int img, logr;
    struct stat st;
    ssize_t got;
    size_t len = 0, cap = 0;
    if (!is_tracked(fd)) return;
    snprintf(side, sizeof side, "%s.dirty", paths[fd]);
    logr = real_open(side, O_RDONLY | O_CLOEXEC, 0);
    if (logr < 0) return;
    for (;;) {
        if (cap - len < sizeof buf) { cap = cap * 2 + sizeof buf; text = realloc(text, cap + 1); }
        got = read(logr, text + len, cap - len);
        if (got <= 0) break;
        len += (size_t)got;
    }
    real_close(logr);
    if (!text) return;
    text[len] = 0;
    snprintf(side, sizeof side, "%s.durable", paths[fd]);
    img = real_open(side, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (img >= 0) {
        for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            long long a = 0, b = 0;
            char op = 0;
            if (sscanf(line, "%c %lld %lld", &op, &a, &b) < 2 || op != 'W') continue;
            while (b > 0) {
                ssize_t chunk = b < (long long)sizeof buf ? (ssize_t)b : (ssize_t)sizeof buf;
                ssize_t r = pread(fd, buf, (size_t)chunk, a);
                if (r <= 0) break;
                real_pwrite(img, buf, (size_t)r, a);
                a += r; b -= r;
            }
        }
        if (fstat(fd, &st) == 0) real_ftruncate(img, st.st_size);
        real_close(img);
    }
    free(text);
    if (dirty_fd[fd] > 0) real_ftruncate(dirty_fd[fd], 0);
}

int fsync(int fd) {
    int r;
    init();
    r = real_fsync(fd);
    if (r == 0) make_durable(fd);
    return r;
}

int fdatasync(int fd) {
    int r;
    init();
    r = real_fdatasync(fd);
    if (r == 0) make_durable(fd);
    return r;
}

int close(int fd) {
    init();
    if (is_tracked(fd)) {
        free(paths[fd]);
        paths[fd] = NULL;
        if (dirty_fd[fd] > 0) real_close(dirty_fd[fd]);
        dirty_fd[fd] = 0;
    }
    return real_close(fd);
}

int unlink(const char *path) {
    char side[PATH_MAX + 16];
    init();
    if (under_dir(path)) { /* taken as durable at once (the directory's own sync is not modelled) */
        snprintf(side, sizeof side, "%s.durable", path);
        real_unlink(side);
        snprintf(side, sizeof side, "%s.dirty", path);
        real_unlink(side);
    }
    return real_unlink(path);
}
