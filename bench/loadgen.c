/* A TCP load generator for the benchmark: one thread, epoll, non-blocking sockets.
 *
 *   loadgen HOST PORT MODE CONCURRENCY CONNECTIONS SECONDS PAYLOAD_BYTES
 *
 * MODE "oneshot": CONCURRENCY clients, each connects, sends [u32 len][payload], reads to EOF
 *   (the server closes after the reply), then starts over (gaspar format, bare Twisted ceiling).
 * MODE "framed": CONNECTIONS persistent connections, CONCURRENCY/CONNECTIONS requests pipelined
 *   on each; replies are [u32 len][u8 status][payload], matched in order.
 * A reply whose length differs from the payload's (echo) or whose status is not 0 is an error.
 * Prints one JSON object: requests, errors, seconds, p50_ms, p99_ms.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 4096

typedef struct {
    int fd;
    int connected;
    size_t sent;          /* bytes of the current output sent */
    size_t to_send;       /* bytes queued to send (framed: several requests) */
    size_t got;           /* bytes of the current reply received */
    size_t expect;        /* framed: total size of the reply being read, 0 if header unknown */
    unsigned char head[5];
    double started[MAX_DEPTH]; /* send time of each request in flight, FIFO */
    int head_i, count;
    int ok; /* oneshot: reply length matched so far */
} Client;

static struct sockaddr_in addr;
static int epfd, mode_framed, depth;
static size_t payload_len;
static unsigned char *request;
static size_t request_len;
static double *latencies;
static size_t n_lat, cap_lat;
static long n_req, n_err;
static double deadline;
static unsigned char sink[1 << 20];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void record(double started) {
    if (n_lat == cap_lat) {
        cap_lat = cap_lat ? cap_lat * 2 : 65536;
        latencies = realloc(latencies, cap_lat * sizeof(double));
    }
    double t = now();
    latencies[n_lat++] = t - started;
    if (t <= deadline) n_req++; /* throughput counts replies inside the window only */
}

static void push_start(Client *c) {
    c->started[(c->head_i + c->count) % MAX_DEPTH] = now();
    c->count++;
}

static double pop_start(Client *c) {
    double t = c->started[c->head_i];
    c->head_i = (c->head_i + 1) % MAX_DEPTH;
    c->count--;
    return t;
}

static void open_client(Client *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    memset(c, 0, sizeof *c);
    c->fd = fd;
    c->ok = 1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        n_err++;
        close(fd);
        c->fd = -1;
        return;
    }
    int n = mode_framed ? depth : 1;
    for (int i = 0; i < n; i++) push_start(c);
    c->to_send = request_len * n;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static void close_client(Client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* Send what is queued; returns -1 on error. */
static int flush_out(Client *c) {
    while (c->sent < c->to_send) {
        size_t off = c->sent % request_len;
        size_t chunk = request_len - off;
        if (chunk > c->to_send - c->sent) chunk = c->to_send - c->sent;
        ssize_t w = send(c->fd, request + off, chunk, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        c->sent += w;
    }
    if (c->sent == c->to_send) {
        c->sent = c->to_send = 0;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    } else {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

static void queue_request(Client *c) {
    push_start(c);
    c->to_send += request_len;
}

static void on_oneshot_read(Client *c) {
    for (;;) {
        ssize_t r = recv(c->fd, sink, sizeof sink, 0);
        if (r > 0) {
            c->got += r;
            continue;
        }
        if (r < 0 && errno == EAGAIN) return;
        /* EOF or error: the request is over */
        double started = pop_start(c);
        if (r == 0 && c->got == payload_len) record(started);
        else n_err++;
        close_client(c);
        if (now() < deadline) open_client(c);
        return;
    }
}

static void on_framed_read(Client *c) {
    for (;;) {
        ssize_t r;
        if (c->expect == 0) {
            r = recv(c->fd, c->head + c->got, 5 - c->got, 0);
        } else {
            size_t want = c->expect - c->got;
            if (want > sizeof sink) want = sizeof sink;
            r = recv(c->fd, sink, want, 0);
        }
        if (r < 0 && errno == EAGAIN) break;
        if (r <= 0) {
            n_err += c->count;
            close_client(c);
            return;
        }
        c->got += r;
        if (c->expect == 0) {
            if (c->got < 5) continue;
            uint32_t len;
            memcpy(&len, c->head, 4);
            len = ntohl(len);
            c->expect = 5 + (size_t)len - 1; /* length counts the status byte */
            if (len < 1 || c->head[4] != 0 || len - 1 != payload_len) c->ok = 0;
        }
        if (c->expect != 0 && c->got >= c->expect) {
            double started = pop_start(c);
            if (c->ok) record(started);
            else n_err++;
            c->ok = 1;
            c->got = c->expect = 0;
            if (now() < deadline) queue_request(c);
        }
    }
    if (c->to_send > c->sent && flush_out(c) < 0) {
        n_err += c->count;
        close_client(c);
        return;
    }
    if (c->count == 0) close_client(c);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT oneshot|framed CONCURRENCY CONNECTIONS SECONDS BYTES\n",
                argv[0]);
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    mode_framed = strcmp(argv[3], "framed") == 0;
    int concurrency = atoi(argv[4]);
    int connections = mode_framed ? atoi(argv[5]) : concurrency;
    double seconds = atof(argv[6]);
    payload_len = strtoul(argv[7], NULL, 10);
    depth = mode_framed ? concurrency / connections : 1;
    if (depth < 1 || depth > MAX_DEPTH) depth = 1;
    request_len = 4 + payload_len;
    request = malloc(request_len);
    uint32_t be = htonl((uint32_t)payload_len);
    memcpy(request, &be, 4);
    for (size_t i = 0; i < payload_len; i++) request[4 + i] = 'a' + i % 26;

    epfd = epoll_create1(0);
    Client *clients = calloc(connections, sizeof(Client));
    double start = now();
    deadline = start + seconds;
    for (int i = 0; i < connections; i++) open_client(&clients[i]);
    struct epoll_event events[256];
    int live = connections;
    double hard_stop = deadline + 10.0;
    while (live > 0 && now() < hard_stop) {
        int n = epoll_wait(epfd, events, 256, 100);
        for (int i = 0; i < n; i++) {
            Client *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if ((events[i].events & EPOLLOUT) && c->to_send > c->sent) {
                if (flush_out(c) < 0) {
                    n_err += c->count;
                    close_client(c);
                    continue;
                }
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (mode_framed) on_framed_read(c);
                else on_oneshot_read(c);
            }
        }
        live = 0;
        for (int i = 0; i < connections; i++) live += clients[i].fd >= 0;
    }
    double elapsed = seconds;
    (void)start;
    for (int i = 0; i < connections; i++)
        if (clients[i].fd >= 0) {
            n_err += clients[i].count;
            close_client(&clients[i]);
        }
    qsort(latencies, n_lat, sizeof(double), cmp);
    double p50 = n_lat ? latencies[n_lat / 2] : 0, p99 = n_lat ? latencies[n_lat * 99 / 100] : 0;
    printf("{\"requests\": %ld, \"completed\": %zu, \"errors\": %ld, \"seconds\": %.4f, \"p50_ms\": %.3f, "
           "\"p99_ms\": %.3f}\n",
           n_req, n_lat, n_err, elapsed, p50 * 1e3, p99 * 1e3);
    return 0;
}
