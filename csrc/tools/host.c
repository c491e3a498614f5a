/*
 * host.c - probes of the machine's real kernel, for the live-kernel oracle
 * (pygup/host.py).  Nothing here touches the emulator: each probe makes
 * the real system calls (raw syscall(2) for io_uring and memfd_secret: no
 * liburing) and returns what the kernel returned, 0 / a count, or -errno.
 *
 * The GUP caller behind each probe (Linux 6.5 .. 6.18):
 *   io_uring IORING_REGISTER_BUFFERS   pin_user_pages[_fast](WRITE|LONGTERM)
 *   /proc/self/mem pwrite / pread      get_user_pages_remote(FORCE[|WRITE])
 *   process_vm_writev / readv          pin_user_pages_remote([WRITE])
 *   O_DIRECT read into the buffer      pin_user_pages_fast(WRITE)
 *   O_DIRECT write from the buffer     pin_user_pages_fast(0)
 *   vmsplice into a pipe               get_user_pages_fast(0)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "tools/host.h"

#define HOST_PAGE 4096u

static void *ptr(uint64_t addr)
{
    return (void *)(uintptr_t)addr;
}

/* ---- mappings ------------------------------------------------------------ */

int pg_host_mmap(uint64_t len, int prot, int flags, int fd, int64_t offset,
                 uint64_t *addr)
{
    void *p = mmap(NULL, (size_t)len, prot, flags, fd, (off_t)offset);
    if (p == MAP_FAILED)
        return -errno;
    *addr = (uint64_t)(uintptr_t)p;
    return 0;
}

int pg_host_mmap_fixed(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                       int64_t offset)
{
    void *p = mmap(ptr(addr), (size_t)len, prot, flags | MAP_FIXED, fd, (off_t)offset);
    if (p == MAP_FAILED)
        return -errno;
    return p == ptr(addr) ? 0 : -EINVAL;
}

int pg_host_munmap(uint64_t addr, uint64_t len)
{
    return munmap(ptr(addr), (size_t)len) ? -errno : 0;
}

int pg_host_mprotect(uint64_t addr, uint64_t len, int prot)
{
    return mprotect(ptr(addr), (size_t)len, prot) ? -errno : 0;
}

int pg_host_msync(uint64_t addr, uint64_t len, int flags)
{
    return msync(ptr(addr), (size_t)len, flags) ? -errno : 0;
}

/* A user access to every page, as memset() would fault them in: a SIGSEGV
 * or SIGBUS is caught and reported instead of killing the interpreter.
 * The handlers are process-wide for the duration of the call: the oracle
 * calls this from one thread. */
static _Thread_local sigjmp_buf *touch_env;

static void touch_handler(int sig)
{
    if (touch_env)
        siglongjmp(*touch_env, sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int access_words(uint64_t addr, uint64_t len, int write, uint64_t value,
                        uint64_t *out);

int pg_host_touch(uint64_t addr, uint64_t len, int write, uint64_t value)
{
    return access_words(addr, len, write, value, NULL);
}

int pg_host_load(uint64_t addr, uint64_t *value)
{
    *value = 0;
    return access_words(addr, 8, 0, 0, value);
}

static int access_words(uint64_t addr, uint64_t len, int write, uint64_t value,
                        uint64_t *out)
{
    struct sigaction sa, old_segv, old_bus;
    sigjmp_buf env;
    volatile uint64_t off;
    int rc = 0, sig;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = touch_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NODEFER;
    if (sigaction(SIGSEGV, &sa, &old_segv))
        return -errno;
    if (sigaction(SIGBUS, &sa, &old_bus)) {
        rc = -errno;
        sigaction(SIGSEGV, &old_segv, NULL);
        return rc;
    }
    sig = sigsetjmp(env, 1);
    if (sig == 0) {
        touch_env = &env;
        for (off = 0; off < len; off += HOST_PAGE) {
            volatile uint64_t *p = (volatile uint64_t *)(uintptr_t)(addr + off);
            if (write)
                *p = value;
            else if (out)
                *out = *p;
            else
                (void)*p;
        }
    } else {
        rc = sig == SIGBUS ? -EIO : -EFAULT;
    }
    touch_env = NULL;
    sigaction(SIGSEGV, &old_segv, NULL);
    sigaction(SIGBUS, &old_bus, NULL);
    return rc;
}

int pg_host_memfd_secret(unsigned int flags)
{
#ifdef SYS_memfd_secret
    long fd = syscall(SYS_memfd_secret, flags);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)flags;
    return -ENOSYS;
#endif
}

/* ---- io_uring -------------------------------------------------------------- */

static int ring_setup(void)
{
    struct io_uring_params params;
    long fd;

    memset(&params, 0, sizeof params);
    fd = syscall(SYS_io_uring_setup, 1, &params);
    return fd < 0 ? -errno : (int)fd;
}

static int ring_register(int fd, uint64_t addr, uint64_t len)
{
    struct iovec iov;

    iov.iov_base = ptr(addr);
    iov.iov_len = (size_t)len;
    if (syscall(SYS_io_uring_register, fd, IORING_REGISTER_BUFFERS, &iov, 1) < 0)
        return -errno;
    return 0;
}

static int ring_unregister(int fd)
{
    if (syscall(SYS_io_uring_register, fd, IORING_UNREGISTER_BUFFERS, NULL, 0) < 0)
        return -errno;
    return 0;
}

int pg_host_io_uring_available(void)
{
    int fd = ring_setup();
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

int pg_host_io_uring_register(uint64_t addr, uint64_t len)
{
    int fd = ring_setup(), rc;

    if (fd < 0)
        return fd;
    rc = ring_register(fd, addr, len);
    if (rc == 0)
        rc = ring_unregister(fd);
    close(fd);
    return rc;
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int pg_host_io_uring_register_ns(uint64_t addr, uint64_t len, int iterations,
                                 uint64_t *total_ns, uint64_t *min_ns)
{
    int fd, rc = 0, i;
    uint64_t total = 0, best = UINT64_MAX;

    if (iterations <= 0 || !total_ns || !min_ns)
        return -EINVAL;
    fd = ring_setup();
    if (fd < 0)
        return fd;
    for (i = 0; i < iterations; i++) {
        uint64_t t0 = now_ns(), dt;
        rc = ring_register(fd, addr, len);
        if (rc)
            break;
        rc = ring_unregister(fd);
        dt = now_ns() - t0;
        if (rc)
            break;
        total += dt;
        if (dt < best)
            best = dt;
    }
    close(fd);
    if (rc)
        return rc;
    *total_ns = total;
    *min_ns = best;
    return 0;
}

/* ---- the other GUP callers ------------------------------------------------- */

int64_t pg_host_proc_mem_write(uint64_t addr, uint64_t value)
{
    int fd = open("/proc/self/mem", O_RDWR | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = pwrite(fd, &value, sizeof value, (off_t)addr);
    if (n < 0)
        n = -errno;
    close(fd);
    return n;
}

int64_t pg_host_proc_mem_read(uint64_t addr, uint64_t *value)
{
    int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = pread(fd, value, sizeof *value, (off_t)addr);
    if (n < 0)
        n = -errno;
    close(fd);
    return n;
}

int64_t pg_host_process_vm_writev(uint64_t addr, uint64_t value)
{
    struct iovec local = { &value, sizeof value };
    struct iovec remote = { ptr(addr), sizeof value };
    ssize_t n = process_vm_writev(getpid(), &local, 1, &remote, 1, 0);

    return n < 0 ? -errno : n;
}

int64_t pg_host_process_vm_readv(uint64_t addr, uint64_t *value)
{
    struct iovec local = { value, sizeof *value };
    struct iovec remote = { ptr(addr), sizeof *value };
    ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);

    return n < 0 ? -errno : n;
}

int64_t pg_host_process_vm_readv_range(uint64_t addr, uint64_t len)
{
    static char buf[16 * HOST_PAGE];
    struct iovec local = { buf, sizeof buf };
    struct iovec remote = { ptr(addr), (size_t)len };
    ssize_t n;

    if (len > sizeof buf)
        return -EINVAL;
    local.iov_len = (size_t)len;
    n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    return n < 0 ? -errno : n;
}

int64_t pg_host_o_direct_read(int fd, uint64_t addr, uint64_t len, int64_t offset)
{
    ssize_t n = pread(fd, ptr(addr), (size_t)len, (off_t)offset);

    return n < 0 ? -errno : n;
}

int64_t pg_host_o_direct_write(int fd, uint64_t addr, uint64_t len, int64_t offset)
{
    ssize_t n = pwrite(fd, ptr(addr), (size_t)len, (off_t)offset);

    return n < 0 ? -errno : n;
}

int64_t pg_host_vmsplice(uint64_t addr, uint64_t len)
{
    struct iovec iov = { ptr(addr), (size_t)len };
    int fds[2];
    ssize_t n;

    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK))
        return -errno;
    n = vmsplice(fds[1], &iov, 1, SPLICE_F_NONBLOCK);
    if (n < 0)
        n = -errno;
    close(fds[0]);
    close(fds[1]);
    return n;
}

/* ---- a ring with a registered buffer, for the multi-step scenarios -------- */

#define HOST_RINGS 4

struct host_ring {
    int fd;                       /* -1: the slot is free */
    void *sq, *cq, *sqes;
    size_t sq_len, cq_len, sqes_len;
    struct io_uring_params p;
};

static struct host_ring rings[HOST_RINGS] = {
    {.fd = -1}, {.fd = -1}, {.fd = -1}, {.fd = -1},
};

static void ring_unmap(struct host_ring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_len);
    if (r->cq && r->cq != MAP_FAILED && r->cq != r->sq)
        munmap(r->cq, r->cq_len);
    if (r->sq && r->sq != MAP_FAILED)
        munmap(r->sq, r->sq_len);
    r->sq = r->cq = r->sqes = NULL;
}

int pg_host_ring_setup(void)
{
    struct host_ring *r = NULL;
    long fd;
    int i, rc;

    for (i = 0; i < HOST_RINGS; i++)
        if (rings[i].fd < 0) {
            r = &rings[i];
            break;
        }
    if (!r)
        return -EMFILE;
    memset(r, 0, sizeof *r);
    r->fd = -1;
    fd = syscall(SYS_io_uring_setup, 2, &r->p);
    if (fd < 0)
        return -errno;
    r->sq_len = r->p.sq_off.array + r->p.sq_entries * sizeof(uint32_t);
    r->cq_len = r->p.cq_off.cqes + r->p.cq_entries * sizeof(struct io_uring_cqe);
    if (r->p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_len > r->sq_len)
            r->sq_len = r->cq_len;
        r->cq_len = r->sq_len;
    }
    r->sqes_len = r->p.sq_entries * sizeof(struct io_uring_sqe);
    r->sq = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                 (int)fd, IORING_OFF_SQ_RING);
    r->cq = (r->p.features & IORING_FEAT_SINGLE_MMAP) ? r->sq
        : mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
               (int)fd, IORING_OFF_CQ_RING);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                   (int)fd, IORING_OFF_SQES);
    if (r->sq == MAP_FAILED || r->cq == MAP_FAILED || r->sqes == MAP_FAILED) {
        rc = -errno;
        ring_unmap(r);
        close((int)fd);
        return rc;
    }
    r->fd = (int)fd;
    return i;
}

static struct host_ring *ring_slot(int slot)
{
    if (slot < 0 || slot >= HOST_RINGS || rings[slot].fd < 0)
        return NULL;
    return &rings[slot];
}

int64_t pg_host_ring_rw_fixed(int slot, int write, int fd, uint64_t addr, uint64_t len,
                              int64_t off)
{
    struct host_ring *r = ring_slot(slot);
    struct io_uring_sqe *sqe;
    struct io_uring_cqe *cqe;
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts = {.tv_sec = 5};
    uint32_t *tail, *array, mask, t, *chead, *ctail, h;
    long ret;

    if (!r)
        return -EBADF;
    if (len > UINT32_MAX || off < 0)
        return -EINVAL;
    tail = (uint32_t *)((char *)r->sq + r->p.sq_off.tail);
    mask = *(uint32_t *)((char *)r->sq + r->p.sq_off.ring_mask);
    array = (uint32_t *)((char *)r->sq + r->p.sq_off.array);
    t = __atomic_load_n(tail, __ATOMIC_ACQUIRE);
    sqe = &((struct io_uring_sqe *)r->sqes)[t & mask];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED;
    sqe->fd = fd;
    sqe->off = (uint64_t)off;
    sqe->addr = addr;
    sqe->len = (uint32_t)len;
    sqe->buf_index = 0;
    array[t & mask] = t & mask;
    __atomic_store_n(tail, t + 1, __ATOMIC_RELEASE);
    memset(&arg, 0, sizeof arg);
    arg.ts = (uint64_t)(uintptr_t)&ts;
    ret = syscall(SYS_io_uring_enter, r->fd, 1, 1,
                  IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg, sizeof arg);
    if (ret < 0)
        return -errno;
    chead = (uint32_t *)((char *)r->cq + r->p.cq_off.head);
    ctail = (uint32_t *)((char *)r->cq + r->p.cq_off.tail);
    h = __atomic_load_n(chead, __ATOMIC_ACQUIRE);
    if (h == __atomic_load_n(ctail, __ATOMIC_ACQUIRE))
        return -ETIME;
    mask = *(uint32_t *)((char *)r->cq + r->p.cq_off.ring_mask);
    cqe = &((struct io_uring_cqe *)((char *)r->cq + r->p.cq_off.cqes))[h & mask];
    ret = cqe->res;
    __atomic_store_n(chead, h + 1, __ATOMIC_RELEASE);
    return ret;
}

int pg_host_ring_register(int slot, uint64_t addr, uint64_t len)
{
    struct host_ring *r = ring_slot(slot);

    return r ? ring_register(r->fd, addr, len) : -EBADF;
}

int pg_host_ring_unregister(int slot)
{
    struct host_ring *r = ring_slot(slot);

    return r ? ring_unregister(r->fd) : -EBADF;
}

int pg_host_ring_close(int slot)
{
    struct host_ring *r = ring_slot(slot);

    if (!r)
        return -EBADF;
    ring_unmap(r);
    close(r->fd);
    r->fd = -1;
    return 0;
}
