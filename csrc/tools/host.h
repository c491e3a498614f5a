/*
 * tools/host.h - live-kernel probes for the oracle (pygup/host.py): real
 * system calls on the machine running pygup.  A tool, not the emulator
 * (cffi reads the part between the cdef markers, after pygup.h's).
 */
#ifndef PYGUP_TOOLS_HOST_H
#define PYGUP_TOOLS_HOST_H

#include <stdint.h>

/* PYGUP_CDEF_BEGIN */

/* ---- live-kernel probes (host.c; pygup/host.py, the oracle) ------------- */
/* These make real system calls on the machine running pygup; they never
 * touch an emulated machine.  Each returns what the kernel returned: 0, a
 * byte count, an fd, or -errno.  Addresses are the process's own. */
int pg_host_mmap(uint64_t len, int prot, int flags, int fd, int64_t offset,
                 uint64_t *addr);
/* mmap(MAP_FIXED) at addr: 0 or -errno */
int pg_host_mmap_fixed(uint64_t addr, uint64_t len, int prot, int flags, int fd,
                       int64_t offset);
int pg_host_munmap(uint64_t addr, uint64_t len);
int pg_host_mprotect(uint64_t addr, uint64_t len, int prot);
int pg_host_msync(uint64_t addr, uint64_t len, int flags);
/* a user load (write=0) or store of value at every 4 KiB page of the range,
 * as memset() faults pages in; a SIGSEGV gives -EFAULT, a SIGBUS -EIO */
int pg_host_touch(uint64_t addr, uint64_t len, int write, uint64_t value);
/* a user load of the 8 bytes at addr (0, -EFAULT on SIGSEGV, -EIO on SIGBUS) */
int pg_host_load(uint64_t addr, uint64_t *value);
int pg_host_memfd_secret(unsigned int flags);
/* io_uring_setup(1) works: 0, or -ENOSYS / -EPERM ... */
int pg_host_io_uring_available(void);
/* IORING_REGISTER_BUFFERS of one iovec on a fresh ring, then
 * IORING_UNREGISTER_BUFFERS: FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM */
int pg_host_io_uring_register(uint64_t addr, uint64_t len);
/* register + unregister of one iovec `iterations` times on one ring, each
 * timed with CLOCK_MONOTONIC: the sum and the fastest, in ns */
int pg_host_io_uring_register_ns(uint64_t addr, uint64_t len, int iterations,
                                 uint64_t *total_ns, uint64_t *min_ns);
/* 8 bytes through /proc/self/mem (FOLL_FORCE [| FOLL_WRITE]) */
int64_t pg_host_proc_mem_write(uint64_t addr, uint64_t value);
int64_t pg_host_proc_mem_read(uint64_t addr, uint64_t *value);
/* 8 bytes with process_vm_writev / readv on this process */
int64_t pg_host_process_vm_writev(uint64_t addr, uint64_t value);
int64_t pg_host_process_vm_readv(uint64_t addr, uint64_t *value);
/* process_vm_readv of len (<= 64 KiB) bytes at addr: bytes read (partial
 * where the range stops being readable) or -errno */
int64_t pg_host_process_vm_readv_range(uint64_t addr, uint64_t len);
/* pread(fd, addr, len, offset) on an fd the caller opened O_DIRECT */
int64_t pg_host_o_direct_read(int fd, uint64_t addr, uint64_t len, int64_t offset);
/* pwrite(fd, addr, len, offset) on an fd the caller opened O_DIRECT */
int64_t pg_host_o_direct_write(int fd, uint64_t addr, uint64_t len, int64_t offset);
/* vmsplice one iovec into a fresh (non-blocking) pipe, then close it */
int64_t pg_host_vmsplice(uint64_t addr, uint64_t len);

/* A ring kept across steps, for the oracle's multi-step scenarios (made
 * first, so that its own mappings never fill a hole a scenario makes):
 * ring_setup returns a slot (0..3) or -errno; ring_register registers one
 * buffer (IORING_REGISTER_BUFFERS: FOLL_WRITE | FOLL_PIN | FOLL_LONGTERM)
 * until ring_unregister; ring_rw_fixed submits one IORING_OP_READ_FIXED
 * (write=0: the file into the buffer) or WRITE_FIXED (the buffer into the
 * file) of len bytes at buffer address addr and file offset off, and waits
 * at most 5 s: the CQE's res (bytes or -errno), -ETIME past the bound. */
int pg_host_ring_setup(void);
int pg_host_ring_register(int slot, uint64_t addr, uint64_t len);
int64_t pg_host_ring_rw_fixed(int slot, int write, int fd, uint64_t addr, uint64_t len,
                              int64_t off);
int pg_host_ring_unregister(int slot);
int pg_host_ring_close(int slot);

/* PYGUP_CDEF_END */

#endif /* PYGUP_TOOLS_HOST_H */
