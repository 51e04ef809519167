/*
 * A vsock tool for the Linux test guest (busybox has none). Built static on the host
 * by the tests (gcc -static) and carried into the guest in an extra initramfs cpio.
 *
 *   vsock connect CID PORT MESSAGE   connect, send MESSAGE, print what comes back
 *                                    until the peer closes: "vsock: got <text>"
 *   vsock listen PORT                accept one connection, echo back what it sends
 *                                    prefixed with "echo:", then close
 *
 * Exit status 0 on success; a failing step prints "vsock: <step>: <errno text>".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *step)
{
    printf("vsock: %s: %s\n", step, strerror(errno));
    return 1;
}

static struct sockaddr_vm addr(unsigned cid, unsigned port)
{
    struct sockaddr_vm a;
    memset(&a, 0, sizeof(a));
    a.svm_family = AF_VSOCK;
    a.svm_cid = cid;
    a.svm_port = port;
    return a;
}

static int do_connect(unsigned cid, unsigned port, const char *msg)
{
    struct sockaddr_vm a = addr(cid, port);
    char buf[512];
    size_t got = 0;
    ssize_t n;
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("connect");
    if (write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg))
        return fail("write");
    shutdown(fd, SHUT_WR);
    while (got < sizeof(buf) - 1 && (n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    printf("vsock: got %s\n", buf);
    close(fd);
    return 0;
}

static int do_listen(unsigned port)
{
    struct sockaddr_vm a = addr(VMADDR_CID_ANY, port);
    char buf[512];
    ssize_t n;
    int c, fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket");
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        return fail("bind");
    if (listen(fd, 1) < 0)
        return fail("listen");
    printf("vsock: listening on %u\n", port);
    fflush(stdout);
    c = accept(fd, NULL, NULL);
    if (c < 0)
        return fail("accept");
    n = read(c, buf, sizeof(buf) - 1);
    if (n < 0)
        return fail("read");
    buf[n] = 0;
    if (write(c, "echo:", 5) != 5 || write(c, buf, (size_t)n) != n)
        return fail("write");
    printf("vsock: echoed %s\n", buf);
    close(c);
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "connect") == 0)
        return do_connect((unsigned)atoi(argv[2]), (unsigned)atoi(argv[3]), argv[4]);
    if (argc == 3 && strcmp(argv[1], "listen") == 0)
        return do_listen((unsigned)atoi(argv[2]));
    fprintf(stderr, "usage: vsock connect CID PORT MESSAGE | vsock listen PORT\n");
    return 2;
}
