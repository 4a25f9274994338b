/*
 * bfframes: the frame generator and counters of `butterfly-bench frames`.
 *
 * Written in C so that the figures measure the path a frame takes and not
 * the program making it: one write() (or read()) per frame on a tap, no
 * batching, no interpreter. Every mode attaches to an existing tap by name
 * (as QEMU does), waits until the kernel has it up, runs until its deadline
 * or a signal, and prints one line of key=value figures on stdout, its own
 * CPU time (getrusage) included:
 * a tap write carries the frame through the kernel's whole forwarding path
 * in the writer's system call, so that CPU time is the path's.
 *
 *   bfframes blast --dev TAP --src-mac M --dst-mac M --src-ip A --dst-ip A
 *                  --port P [--sport P] [--size BYTES] [--seconds S] [--count N]
 *                  [--prime]
 *       UDP frames of BYTES (default 64, no FCS) from src:sport (default
 *       40000; one flow per source port, for conntrack) to dst:P, one
 *       write() each, for S seconds or N frames. --prime sends one frame
 *       first and waits 200 ms (for the receiver to answer it, making the
 *       flow established in conntrack).
 *       -> sent=N elapsed_ns=T user_ns=U sys_ns=S
 *   bfframes sink --dev TAP --port P [--answer-first]
 *       Reads frames until SIGTERM/SIGINT, counting the UDP frames to port
 *       P; --answer-first writes the first one back with its addresses
 *       swapped (a reply, for --prime).
 *       -> received=N bytes=B user_ns=U sys_ns=S
 *   bfframes echo --dev TAP --port P
 *       Writes back every UDP frame to port P with addresses and ports
 *       swapped, until SIGTERM/SIGINT.
 *       -> echoed=N user_ns=U sys_ns=S
 *   bfframes ping (blast's addresses) [--size BYTES] [--seconds S]
 *                 [--timeout-ms MS]
 *       Request/response: one frame, then wait for its echo (matched by a
 *       sequence number in the payload) before the next, for S seconds.
 *       -> transactions=N lost=L elapsed_ns=T p50_ns=.. p99_ns=.. mean_ns=..
 *          samples=K user_ns=U sys_ns=S
 *
 * Exit status: 0 on success, 1 on a runtime error, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define ETH_LEN 14
#define IP_LEN 20
#define UDP_LEN 8
#define HEADERS (ETH_LEN + IP_LEN + UDP_LEN)
#define MAX_FRAME 65536
#define MAX_SAMPLES 4000000

struct options {
    const char *mode;
    const char *dev;
    uint8_t src_mac[6], dst_mac[6];
    struct in_addr src_ip, dst_ip;
    int port;
    int sport;
    int size;
    double seconds;
    long count;
    int prime;
    int answer_first;
    int timeout_ms;
    int have_src_mac, have_dst_mac, have_src_ip, have_dst_ip;
};

static volatile sig_atomic_t stopping;

static void on_signal(int signo)
{
    (void)signo;
    stopping = 1;
}

static void usage(const char *why)
{
    fprintf(stderr, "bfframes: %s\n"
            "usage: bfframes blast|sink|echo|ping --dev TAP [--src-mac M --dst-mac M"
            " --src-ip A --dst-ip A] --port P [--sport P] [--size BYTES] [--seconds S] [--count N]"
            " [--prime] [--answer-first] [--timeout-ms MS]\n", why);
    exit(2);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cpu_ns(uint64_t *user, uint64_t *sys)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    *user = (uint64_t)usage.ru_utime.tv_sec * 1000000000u + (uint64_t)usage.ru_utime.tv_usec * 1000u;
    *sys = (uint64_t)usage.ru_stime.tv_sec * 1000000000u + (uint64_t)usage.ru_stime.tv_usec * 1000u;
}

static void parse_mac(const char *text, uint8_t mac[6])
{
    unsigned int b[6];
    char extra;
    if (sscanf(text, "%x:%x:%x:%x:%x:%x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &extra) != 6)
        usage("a MAC address is six hex pairs separated by colons");
    for (int i = 0; i < 6; i++) {
        if (b[i] > 0xff)
            usage("a MAC address byte is above ff");
        mac[i] = (uint8_t)b[i];
    }
}

static long parse_long(const char *text, const char *name, long low, long high)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *end || value < low || value > high) {
        char why[128];
        snprintf(why, sizeof why, "%s must be an integer from %ld to %ld", name, low, high);
        usage(why);
    }
    return value;
}

static void parse(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof *o);
    o->size = 64;
    o->seconds = 1.0;
    o->timeout_ms = 100;
    o->sport = 40000;
    if (argc < 2)
        usage("no mode");
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *key = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        int flag = 1;
        if (!strcmp(key, "--prime"))
            o->prime = 1;
        else if (!strcmp(key, "--answer-first"))
            o->answer_first = 1;
        else
            flag = 0;
        if (flag)
            continue;
        if (value == NULL)
            usage("an option lacks its value");
        i++;
        if (!strcmp(key, "--dev"))
            o->dev = value;
        else if (!strcmp(key, "--src-mac"))
            parse_mac(value, o->src_mac), o->have_src_mac = 1;
        else if (!strcmp(key, "--dst-mac"))
            parse_mac(value, o->dst_mac), o->have_dst_mac = 1;
        else if (!strcmp(key, "--src-ip")) {
            if (inet_pton(AF_INET, value, &o->src_ip) != 1)
                usage("--src-ip is not an IPv4 address");
            o->have_src_ip = 1;
        } else if (!strcmp(key, "--dst-ip")) {
            if (inet_pton(AF_INET, value, &o->dst_ip) != 1)
                usage("--dst-ip is not an IPv4 address");
            o->have_dst_ip = 1;
        } else if (!strcmp(key, "--port"))
            o->port = (int)parse_long(value, "--port", 1, 65535);
        else if (!strcmp(key, "--sport"))
            o->sport = (int)parse_long(value, "--sport", 1, 65535);
        else if (!strcmp(key, "--size"))
            o->size = (int)parse_long(value, "--size", HEADERS + 8, 9000);
        else if (!strcmp(key, "--count"))
            o->count = parse_long(value, "--count", 1, 1L << 40);
        else if (!strcmp(key, "--timeout-ms"))
            o->timeout_ms = (int)parse_long(value, "--timeout-ms", 1, 60000);
        else if (!strcmp(key, "--seconds")) {
            char *end;
            o->seconds = strtod(value, &end);
            if (*end || !(o->seconds > 0 && o->seconds <= 3600))
                usage("--seconds must be a number above 0, at most 3600");
        } else {
            char why[128];
            snprintf(why, sizeof why, "unknown option %s", key);
            usage(why);
        }
    }
    if (o->dev == NULL || strlen(o->dev) >= IFNAMSIZ)
        usage("--dev names the tap (at most 15 characters)");
    if (o->port == 0)
        usage("--port is required");
    int sends = !strcmp(o->mode, "blast") || !strcmp(o->mode, "ping");
    if (!sends && strcmp(o->mode, "sink") && strcmp(o->mode, "echo"))
        usage("the mode is blast, sink, echo or ping");
    if (sends && !(o->have_src_mac && o->have_dst_mac && o->have_src_ip && o->have_dst_ip))
        usage("blast and ping need --src-mac, --dst-mac, --src-ip and --dst-ip");
}

/* Attaching brings the tap's carrier up, but the kernel's link watch applies it
 * (the qdisc, the bridge port's state) up to a second later: frames written or
 * sent to it before then are dropped, so wait until the tap is up. */
static void wait_up(const char *name)
{
    char path[64], state[16] = "";
    snprintf(path, sizeof path, "/sys/class/net/%s/operstate", name);
    for (int tries = 0; tries < 500; tries++) {
        FILE *file = fopen(path, "r");
        if (file != NULL) {
            if (fgets(state, sizeof state, file) == NULL)
                state[0] = 0;
            fclose(file);
        }
        if (!strncmp(state, "up", 2)) {
            usleep(20000); /* the notifier chain runs after the state is set */
            return;
        }
        usleep(10000);
    }
    fprintf(stderr, "bfframes: tap %s is not up 5 s after attaching (state %s)\n", name,
            state[0] ? state : "unknown");
    exit(1);
}

static int open_tap(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("bfframes: /dev/net/tun");
        exit(1);
    }
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (ioctl(fd, TUNSETIFF, &request) < 0) {
        fprintf(stderr, "bfframes: attaching to tap %s: %s\n", name, strerror(errno));
        exit(1);
    }
    wait_up(name);
    return fd;
}

static uint16_t checksum(const uint8_t *data, size_t length)
{
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < length; i += 2)
        sum += (uint32_t)(data[i] << 8 | data[i + 1]);
    if (length & 1)
        sum += (uint32_t)data[length - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* An Ethernet + IPv4 + UDP frame of o->size bytes; the UDP checksum is 0 (none). */
static void build_frame(const struct options *o, uint8_t *frame)
{
    memset(frame, 0, (size_t)o->size);
    memcpy(frame, o->dst_mac, 6);
    memcpy(frame + 6, o->src_mac, 6);
    frame[12] = 0x08;
    frame[13] = 0x00;
    uint8_t *ip = frame + ETH_LEN;
    uint16_t ip_total = (uint16_t)(o->size - ETH_LEN);
    ip[0] = 0x45;
    ip[2] = (uint8_t)(ip_total >> 8);
    ip[3] = (uint8_t)ip_total;
    ip[6] = 0x40; /* don't fragment */
    ip[8] = 64;
    ip[9] = 17;
    memcpy(ip + 12, &o->src_ip, 4);
    memcpy(ip + 16, &o->dst_ip, 4);
    uint16_t sum = checksum(ip, IP_LEN);
    ip[10] = (uint8_t)(sum >> 8);
    ip[11] = (uint8_t)sum;
    uint8_t *udp = ip + IP_LEN;
    uint16_t sport = (uint16_t)o->sport, udp_total = (uint16_t)(ip_total - IP_LEN);
    udp[0] = (uint8_t)(sport >> 8);
    udp[1] = (uint8_t)sport;
    udp[2] = (uint8_t)(o->port >> 8);
    udp[3] = (uint8_t)o->port;
    udp[4] = (uint8_t)(udp_total >> 8);
    udp[5] = (uint8_t)udp_total;
}

/* True when the frame is IPv4 UDP to `port` (what the bench sends), not the
 * kernel's own chatter (IPv6 neighbour discovery and the like). */
static int ours(const uint8_t *frame, ssize_t length, int port)
{
    if (length < HEADERS || frame[12] != 0x08 || frame[13] != 0x00)
        return 0;
    const uint8_t *ip = frame + ETH_LEN;
    if ((ip[0] >> 4) != 4 || ip[9] != 17)
        return 0;
    const uint8_t *udp = ip + (ip[0] & 0x0f) * 4;
    if (udp + UDP_LEN > frame + length)
        return 0;
    return (udp[2] << 8 | udp[3]) == port;
}

/* Addresses and ports swapped: the frame becomes its own reply (the IPv4
 * header checksum is unchanged, the sum being commutative). */
static void swap(uint8_t *frame)
{
    uint8_t mac[6], address[4], port[2];
    memcpy(mac, frame, 6);
    memcpy(frame, frame + 6, 6);
    memcpy(frame + 6, mac, 6);
    uint8_t *ip = frame + ETH_LEN;
    memcpy(address, ip + 12, 4);
    memcpy(ip + 12, ip + 16, 4);
    memcpy(ip + 16, address, 4);
    uint8_t *udp = ip + (ip[0] & 0x0f) * 4;
    memcpy(port, udp, 2);
    memcpy(udp, udp + 2, 2);
    memcpy(udp + 2, port, 2);
}

static void install_handlers(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_signal; /* no SA_RESTART: a blocked read() returns EINTR */
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
}

static void write_frame(int fd, const uint8_t *frame, int size, const char *dev)
{
    if (write(fd, frame, (size_t)size) != size) {
        fprintf(stderr, "bfframes: writing to %s: %s\n", dev, strerror(errno));
        exit(1);
    }
}

static int blast(const struct options *o)
{
    int fd = open_tap(o->dev);
    static uint8_t frame[MAX_FRAME];
    build_frame(o, frame);
    if (o->prime) {
        write_frame(fd, frame, o->size, o->dev);
        usleep(200000);
    }
    uint64_t user0, sys0, user1, sys1;
    cpu_ns(&user0, &sys0);
    uint64_t start = now_ns();
    uint64_t deadline = start + (uint64_t)(o->seconds * 1e9);
    long sent = 0;
    for (;;) {
        /* the clock is read every 256 frames: a vDSO call, but not free */
        for (int i = 0; i < 256; i++) {
            write_frame(fd, frame, o->size, o->dev);
            sent++;
            if (o->count && sent >= o->count)
                goto done;
        }
        if (!o->count && now_ns() >= deadline)
            break;
    }
done:;
    uint64_t elapsed = now_ns() - start;
    cpu_ns(&user1, &sys1);
    printf("sent=%ld elapsed_ns=%llu user_ns=%llu sys_ns=%llu\n", sent,
           (unsigned long long)elapsed, (unsigned long long)(user1 - user0),
           (unsigned long long)(sys1 - sys0));
    return 0;
}

static int sink(const struct options *o, int echo)
{
    int fd = open_tap(o->dev);
    install_handlers();
    /* non-blocking, and poll() only when nothing is queued: a signal that
     * lands just before a wait cannot leave the sink blocked for good */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct pollfd waiting = {.fd = fd, .events = POLLIN};
    static uint8_t frame[MAX_FRAME];
    long counted = 0;
    long long bytes = 0;
    int answer = o->answer_first;
    uint64_t user0, sys0, user1, sys1;
    cpu_ns(&user0, &sys0);
    printf("ready\n");
    fflush(stdout);
    while (!stopping) {
        ssize_t length = read(fd, frame, sizeof frame);
        if (length < 0) {
            if (errno == EAGAIN)
                poll(&waiting, 1, 100);
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "bfframes: reading from %s: %s\n", o->dev, strerror(errno));
            return 1;
        }
        if (!ours(frame, length, o->port))
            continue;
        counted++;
        bytes += length;
        if (echo || answer) {
            answer = 0;
            swap(frame);
            if (write(fd, frame, (size_t)length) != length && errno != EINTR) {
                fprintf(stderr, "bfframes: writing to %s: %s\n", o->dev, strerror(errno));
                return 1;
            }
        }
    }
    cpu_ns(&user1, &sys1);
    printf("%s=%ld bytes=%lld user_ns=%llu sys_ns=%llu\n", echo ? "echoed" : "received", counted,
           bytes, (unsigned long long)(user1 - user0), (unsigned long long)(sys1 - sys0));
    return 0;
}

static int compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int ping(const struct options *o)
{
    int fd = open_tap(o->dev);
    install_handlers();
    static uint8_t frame[MAX_FRAME], reply[MAX_FRAME];
    build_frame(o, frame);
    uint64_t *samples = malloc(MAX_SAMPLES * sizeof *samples);
    if (samples == NULL) {
        perror("bfframes");
        return 1;
    }
    uint32_t sequence = 0;
    long lost = 0, count = 0;
    uint64_t total = 0, user0, sys0, user1, sys1;
    uint8_t *payload = frame + HEADERS;
    cpu_ns(&user0, &sys0);
    uint64_t start = now_ns(), deadline = start + (uint64_t)(o->seconds * 1e9);
    struct pollfd waiting = {.fd = fd, .events = POLLIN};
    while (!stopping && now_ns() < deadline) {
        sequence++;
        memcpy(payload, &sequence, sizeof sequence);
        uint64_t sent = now_ns();
        write_frame(fd, frame, o->size, o->dev);
        for (;;) {
            int left = o->timeout_ms - (int)((now_ns() - sent) / 1000000u);
            if (left <= 0 || poll(&waiting, 1, left) <= 0) {
                lost++;
                break;
            }
            ssize_t length = read(fd, reply, sizeof reply);
            uint32_t echoed;
            if (length < HEADERS + (ssize_t)sizeof echoed)
                continue;
            memcpy(&echoed, reply + HEADERS, sizeof echoed);
            /* the echo goes back to our source port: match it, and the sequence */
            const uint8_t *udp = reply + ETH_LEN + IP_LEN;
            if (reply[12] != 0x08 || reply[13] != 0x00 || (udp[0] << 8 | udp[1]) != o->port
                || echoed != sequence)
                continue;
            uint64_t took = now_ns() - sent;
            if (count < MAX_SAMPLES)
                samples[count] = took;
            count++;
            total += took;
            break;
        }
    }
    uint64_t elapsed = now_ns() - start;
    cpu_ns(&user1, &sys1);
    long kept = count < MAX_SAMPLES ? count : MAX_SAMPLES;
    qsort(samples, (size_t)kept, sizeof *samples, compare);
    uint64_t p50 = kept ? samples[(kept * 50 + 99) / 100 - 1] : 0;
    uint64_t p99 = kept ? samples[(kept * 99 + 99) / 100 - 1] : 0;
    printf("transactions=%ld lost=%ld elapsed_ns=%llu p50_ns=%llu p99_ns=%llu mean_ns=%llu"
           " samples=%ld user_ns=%llu sys_ns=%llu\n",
           count, lost, (unsigned long long)elapsed, (unsigned long long)p50,
           (unsigned long long)p99, (unsigned long long)(count ? total / (uint64_t)count : 0),
           kept, (unsigned long long)(user1 - user0), (unsigned long long)(sys1 - sys0));
    free(samples);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    parse(argc, argv, &o);
    if (!strcmp(o.mode, "blast"))
        return blast(&o);
    if (!strcmp(o.mode, "sink"))
        return sink(&o, 0);
    if (!strcmp(o.mode, "echo"))
        return sink(&o, 1);
    return ping(&o);
}
