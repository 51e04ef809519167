/*
 * vsock_cat: the guest side of the layer-3 vsock test (busybox has no vsock tool).
 * The test builds it with the host's gcc (-static) and carries it into the guest in the
 * extra initramfs cpio.
 *
 *   vsock_cat cid                print the guest's own CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID)
 *   vsock_cat echo PORT          listen on PORT, print "listening PORT" (stdout, flushed),
 *                                accept one connection and send back every byte it
 *                                receives until the peer shuts down its sending side;
 *                                then print "echoed N" and close
 *   vsock_cat send CID PORT      connect to CID:PORT, send stdin, shut down the sending
 *                                side, then copy what comes back to stdout until the peer
 *                                closes
 *
 * Exit status 0 on success; a failing step prints "vsock_cat: STEP: ERROR" on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *step)
{
    fprintf(stderr, "vsock_cat: %s: %s\n", step, strerror(errno));
    return 1;
}

static struct sockaddr_vm vsock_addr(unsigned cid, unsigned port)
{
    struct sockaddr_vm a;
    memset(&a, 0, sizeof(a));
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

/* Write all of buf; 0 on success. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Copy from `in` to `out` until end of file; bytes copied, or -1. */
static long long copy(int in, int out)
{
    static char buf[65536];
    long long total = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof(buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0)
            return total;
        if (write_all(out, buf, (size_t)n) < 0)
            return -1;
        total += n;
    }
}

static int cmd_cid(void)
{
    unsigned int cid = 0;
    int fd = open("/dev/vsock", O_RDONLY);
    if (fd < 0)
        return fail("open /dev/vsock");
    if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) < 0)
        return fail("IOCTL_VM_SOCKETS_GET_LOCAL_CID");
    printf("%u\n", cid);
    return 0;
}

static int cmd_echo(unsigned port)
{
    struct sockaddr_vm a = vsock_addr(VMADDR_CID_ANY, port);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket");
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("bind");
    if (listen(s, 1) < 0)
        return fail("listen");
    printf("listening %u\n", port);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    if (c < 0)
        return fail("accept");
    long long n = copy(c, c);
    if (n < 0)
        return fail("echo");
    close(c);
    close(s);
    printf("echoed %lld\n", n);
    return 0;
}

static int cmd_send(unsigned cid, unsigned port)
{
    struct sockaddr_vm a = vsock_addr(cid, port);
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket");
    if (connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("connect");
    if (copy(0, s) < 0)
        return fail("send");
    if (shutdown(s, SHUT_WR) < 0)
        return fail("shutdown");
    if (copy(s, 1) < 0)
        return fail("receive");
    close(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "cid") == 0)
        return cmd_cid();
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return cmd_echo((unsigned)strtoul(argv[2], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "send") == 0)
        return cmd_send((unsigned)strtoul(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10));
    fprintf(stderr, "usage: vsock_cat cid | echo PORT | send CID PORT\n");
    return 2;
}
