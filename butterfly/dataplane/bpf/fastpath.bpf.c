// SPDX-License-Identifier: GPL-2.0
/*
 * butterfly's fast path: a tc ingress program on the port of a filtered vnic
 * (frames FROM its VM). It forwards, past the bridge, br_netfilter and the
 * nftables walk, only frames the tables would accept anyway: unicast UDP
 * from the vnic's own MAC (and own address, with IP anti-spoofing), to a
 * local filtered vnic of the same VNI, of a flow the kernel's conntrack
 * already holds as established (a reply seen) in the VNI's zone: the inet
 * table's first rule accepts those. Anything else returns TC_ACT_OK and
 * takes the bridge + nftables path unchanged, which also creates and
 * advances every conntrack entry (so new flows, connection caps and the
 * security groups stay where they are evaluated today).
 *
 * One-way UDP too: conntrack calls a flow new until its first reply, so the
 * tables judge each of its frames again, by the frame's own sender and
 * receiver. An unreplied entry proves only that some pair was admitted for
 * its 5-tuple; so admitted() below, on the egress of a receiving port (ahead
 * of the port guard), records for each frame the tables delivered there
 * (the guard's bits, not forwarded here) the (sender port, receiver port) of
 * its unreplied entry with the current generation, and the fast path
 * forwards the original direction of an unreplied entry only for that pair
 * and generation. The daemon bumps the generation at every change that may
 * narrow what a vnic accepts, so the next frame of every unreplied flow
 * meets the tables again. The reply direction always takes the bridge path:
 * conntrack must see the first reply.
 *
 * TCP takes it only when conntrack does not check TCP windows in this
 * namespace (net.netfilter.nf_conntrack_tcp_be_liberal = 1, read by the
 * daemon at start-up: tcp_timeout_ms is 0 otherwise): segments conntrack does
 * not see would make a later FIN or RST look out of window (invalid). Even
 * then only segments without SYN, FIN or RST, of connections conntrack holds
 * as ESTABLISHED: conntrack follows every change of state itself.
 *
 * Across hosts, in the VNIs every local vnic of which the program serves
 * (the daemon keeps their VXLAN devices in tunnels and remotes only then),
 * the same program also runs on the ingress of the VNI's VXLAN device (the
 * frames other hosts send, decapsulated), and a vnic's frame to a MAC of no
 * local vnic goes to the VNI's VXLAN device:
 * - from a port: a MAC found in no map is none of this host's, and the
 *   bridge would send the frame to the VXLAN device alone; established
 *   flows only, as conntrack holds them on this host (an unreplied flow to
 *   another host takes the bridge path: admitted() records no VXLAN device);
 * - from a VXLAN device, to a local vnic the program serves, of a flow
 *   established in this host's own zone of the VNI (or unreplied and
 *   admitted for the pair, the VXLAN device as the sender): the receiving
 *   host judges with its own conntrack whatever the sending host let go.
 * A VXLAN device's frames carry no MAC or address to check: the sending
 * host checked them, and the tables here check none either.
 *
 * A forwarded frame carries the bits of the mark the port guard
 * (guard.py) wants: the fast path is one more proof of acceptance, and the
 * guard on the receiving port still drops what has none.
 *
 * Built by tools/setup (clang -O2 -g -target bpf) against a vmlinux.h made
 * from the running kernel's BTF; loaded by butterfly/dataplane/fastpath.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TC_ACT_OK 0
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PROTO_TCP 6
#define PROTO_UDP 17
#define TCP_STATE_CHANGES 0x07 /* FIN, SYN, RST in the flags byte */
#define IP_FRAGMENTS 0x3FFF /* more fragments, offset */
#define ALL_OK 0x70000000   /* guard.py's BRIDGE_OK | INBOUND_OK | OUTBOUND_OK */
#define DELIVERED 0x30000000 /* BRIDGE_OK | INBOUND_OK: the tables let it in */
#define SENDERS 0x48000000   /* OUTBOUND_OK | SENDER_OPEN (a VXLAN device's frames) */
#define ZONE_BOTH_DIRECTIONS 3
#define FORWARDED_HERE 0x04000000 /* a mark bit: admitted() must not record it */
#define TC_ACT_UNSPEC (-1)	  /* the next filter (the port guard) decides */

struct bf_port {
	__u32 vni;
	__u16 zone;
	__u8 check_ip;
	__u8 pad;
	__u8 mac[6];
	__u8 pad2[2];
};

struct bf_tunnel {
	__u32 vni;
	__u16 zone;
	__u8 pad[2];
};

struct bf_dest {
	__u32 vni;
	__u8 mac[6];
	__u8 pad[2];
};

struct bf_addr {
	__u32 ifindex;
	__u32 family;
	__u8 addr[16];
};

struct bf_counter {
	__u64 packets;
	__u64 bytes;
};

struct bf_config {
	__u32 udp_timeout_ms;
	__u32 udp_stream_timeout_ms;
	__u32 tcp_timeout_ms; /* established; 0: TCP stays on the slow path */
	__u32 generation;     /* bumped by the daemon: older admissions are void */
};

struct bf_flow {
	__u16 zone;
	__u8 proto;
	__u8 pad;
	struct bpf_sock_tuple tuple; /* the original direction, zero-padded */
};

struct bf_admission {
	__u32 from; /* the sender's port */
	__u32 to;   /* the receiver's port */
	__u32 generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* the port's ifindex */
	__type(value, struct bf_port);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct bf_dest);
	__type(value, __u32); /* the port's ifindex */
} dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* a VXLAN device's ifindex */
	__type(value, struct bf_tunnel);
} tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* a VNI every local vnic of which is served */
	__type(value, __u32); /* its VXLAN device's ifindex */
} remotes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct bf_addr);
	__type(value, __u8);
} addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* the sending port's (or VXLAN device's) ifindex */
	__type(value, struct bf_counter);
} forwarded SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* the least recent go back to the bridge path */
	__type(key, struct bf_flow);
	__type(value, struct bf_admission);
} admissions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bf_config);
} settings SEC(".maps");

/* The kfunc's options with the zone (16 bytes), declared here so that the
 * program also builds against the headers of a kernel whose options have no
 * zone; the daemon checks the running kernel's struct before loading it. */
struct bpf_ct_opts___zoned {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

extern struct nf_conn *bpf_skb_ct_lookup(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					 __u32 tuple_len, struct bpf_ct_opts___zoned *opts,
					 __u32 opts_len) __ksym;
extern void bpf_ct_release(struct nf_conn *ct) __ksym;
extern int bpf_ct_change_timeout(struct nf_conn *ct, __u32 timeout) __ksym;

static __always_inline int own_address(__u32 ifindex, __u32 family, const void *addr,
				       __u32 len)
{
	struct bf_addr key = {.ifindex = ifindex, .family = family};

	__builtin_memcpy(key.addr, addr, 16);
	if (len == 4)
		__builtin_memset(key.addr + 4, 0, 12);
	return bpf_map_lookup_elem(&addrs, &key) != NULL;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

/* Whether the transport header at l4, of protocol proto, is one the fast
 * path may take; its ports in *sport and *dport. */
static __always_inline int ports_of(void *l4, void *end, __u8 proto, const struct bf_config *cfg,
				    __be16 *sport, __be16 *dport)
{
	if (proto == PROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > end)
			return 0;
		*sport = udp->source;
		*dport = udp->dest;
		return 1;
	}
	if (proto == PROTO_TCP && cfg->tcp_timeout_ms) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > end || (((__u8 *)tcp)[13] & TCP_STATE_CHANGES))
			return 0;
		*sport = tcp->source;
		*dport = tcp->dest;
		return 1;
	}
	return 0;
}

/* The flow's tuple and protocol, or 0 when the frame is not plain unicast UDP
 * (or TCP, see above) or, sent by the port of src (NULL: no source to
 * check), not from one of its addresses when it checks them. */
static __always_inline __u32 flow_tuple(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
					__u8 *proto, const struct bf_port *src,
					const struct bf_config *cfg)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return 0;
		if (ip->frag_off & bpf_htons(IP_FRAGMENTS))
			return 0;
		*proto = ip->protocol;
		if (!ports_of(ip + 1, end, *proto, cfg, &tuple->ipv4.sport, &tuple->ipv4.dport))
			return 0;
		if (src && src->check_ip && !own_address(skb->ifindex, 4, &ip->saddr, 4))
			return 0;
		tuple->ipv4.saddr = ip->saddr;
		tuple->ipv4.daddr = ip->daddr;
		return sizeof(tuple->ipv4);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return 0;
		*proto = ip6->nexthdr;
		if (!ports_of(ip6 + 1, end, *proto, cfg, &tuple->ipv6.sport, &tuple->ipv6.dport))
			return 0;
		if (src && src->check_ip && !own_address(skb->ifindex, 6, &ip6->saddr, 16))
			return 0;
		__builtin_memcpy(tuple->ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(tuple->ipv6.daddr, &ip6->daddr, 16);
		return sizeof(tuple->ipv6);
	}
	return 0;
}

/* Whether the tables delivered a frame of this unreplied flow from port
 * from to port to since the last narrowing change (see the header). */
static __always_inline int admitted_pair(const struct bpf_sock_tuple *tuple, __u8 proto,
					 __u16 zone, __u32 from, __u32 to,
					 const struct bf_config *cfg)
{
	struct bf_flow key = {.zone = zone, .proto = proto};
	struct bf_admission *seen;

	__builtin_memcpy(&key.tuple, tuple, sizeof(key.tuple));
	seen = bpf_map_lookup_elem(&admissions, &key);
	return seen && seen->from == from && seen->to == to && seen->generation == cfg->generation;
}

/* True when conntrack holds the flow as established (a reply was seen) in
 * the zone, or, for UDP in its original direction, unreplied but admitted
 * for this pair of ports; refreshes the entry's timeout as conntrack would
 * have. */
static __always_inline int established(struct __sk_buff *skb, struct bpf_sock_tuple *tuple,
				       __u32 tuple_len, __u8 proto, __u16 zone, __u32 to,
				       const struct bf_config *cfg)
{
	struct bpf_ct_opts___zoned opts = {
		.netns_id = BPF_F_CURRENT_NETNS,
		.l4proto = proto,
		.ct_zone_id = zone,
		.ct_zone_dir = ZONE_BOTH_DIRECTIONS,
	};
	struct nf_conn *ct;
	unsigned long status;
	__u32 timeout;

	ct = bpf_skb_ct_lookup(skb, tuple, tuple_len, &opts, sizeof(opts));
	if (!ct)
		return 0;
	status = ct->status;
	if (proto == PROTO_TCP)
		timeout = ct->proto.tcp.state == TCP_CONNTRACK_ESTABLISHED ? cfg->tcp_timeout_ms : 0;
	else
		timeout = (status & IPS_ASSURED) ? cfg->udp_stream_timeout_ms : cfg->udp_timeout_ms;
	if (!(status & IPS_SEEN_REPLY)) {
		if (proto != PROTO_UDP || opts.dir != IP_CT_DIR_ORIGINAL ||
		    !(status & IPS_CONFIRMED) ||
		    !admitted_pair(tuple, proto, zone, skb->ifindex, to, cfg))
			timeout = 0;
	}
	if (!timeout) {
		bpf_ct_release(ct);
		return 0;
	}
	bpf_ct_change_timeout(ct, timeout);
	bpf_ct_release(ct);
	return 1;
}

SEC("tc")
int fastpath(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct bf_dest dest = {};
	struct bf_counter *counter;
	struct bf_tunnel *tunnel;
	struct bf_port *src;
	__u32 ifindex = skb->ifindex;
	__u32 *out, tuple_len, mtu = 0, zero = 0;
	struct bf_config *cfg;
	__u16 zone;
	__u8 proto = 0;

	/* A VLAN tag was taken off into the skb before tc: the bridge path
	 * judges such frames by their tag, this program does not. */
	if ((void *)(eth + 1) > end || skb->vlan_present || (eth->h_dest[0] & 1))
		return TC_ACT_OK;
	src = bpf_map_lookup_elem(&ports, &ifindex);
	if (src) {
		if (!same_mac(eth->h_source, src->mac))
			return TC_ACT_OK;
		dest.vni = src->vni;
		zone = src->zone;
	} else {
		tunnel = bpf_map_lookup_elem(&tunnels, &ifindex);
		if (!tunnel)
			return TC_ACT_OK;
		dest.vni = tunnel->vni;
		zone = tunnel->zone;
	}
	__builtin_memcpy(dest.mac, eth->h_dest, 6);
	out = bpf_map_lookup_elem(&dests, &dest);
	if (!out && src)
		out = bpf_map_lookup_elem(&remotes, &dest.vni);
	if (!out || *out == ifindex)
		return TC_ACT_OK;
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!cfg)
		return TC_ACT_OK;
	tuple_len = flow_tuple(skb, &tuple, &proto, src, cfg);
	if (!tuple_len || !established(skb, &tuple, tuple_len, proto, zone, *out, cfg))
		return TC_ACT_OK;
	/* Too big for the receiver's port (or VXLAN device): the bridge drops it, let it. */
	if (bpf_check_mtu(skb, *out, &mtu, 0, 0))
		return TC_ACT_OK;
	counter = bpf_map_lookup_elem(&forwarded, &ifindex);
	if (counter) {
		counter->packets++;
		counter->bytes += skb->len;
	}
	skb->mark |= ALL_OK | FORWARDED_HERE;
	return bpf_redirect(*out, 0);
}

/* Whether ifindex is a served port or VXLAN device of VNI vni. */
static __always_inline int in_vni(__u32 ifindex, __u32 vni)
{
	struct bf_tunnel *tunnel;
	struct bf_port *port;

	port = bpf_map_lookup_elem(&ports, &ifindex);
	if (port)
		return port->vni == vni;
	tunnel = bpf_map_lookup_elem(&tunnels, &ifindex);
	return tunnel && tunnel->vni == vni;
}

/* On the egress of every port, ahead of the port guard: records the pair of
 * ports (the sender's may be a VXLAN device) of each frame the tables
 * delivered to a served port, of a UDP flow conntrack holds unreplied in
 * its original direction (see the header). */
SEC("tc")
int admitted(struct __sk_buff *skb)
{
	struct bpf_sock_tuple tuple = {};
	struct bf_admission seen = {};
	struct bf_flow key = {};
	struct bf_port *dst;
	__u32 ifindex = skb->ifindex, from = skb->ingress_ifindex, zero = 0;
	struct bf_config *cfg;
	__u32 mark = skb->mark, tuple_len;
	__u8 proto = 0;

	if (mark & FORWARDED_HERE) {
		skb->mark = mark & ~FORWARDED_HERE;
		return TC_ACT_UNSPEC;
	}
	if ((mark & DELIVERED) != DELIVERED || !(mark & SENDERS) || skb->vlan_present)
		return TC_ACT_UNSPEC;
	dst = bpf_map_lookup_elem(&ports, &ifindex);
	cfg = bpf_map_lookup_elem(&settings, &zero);
	if (!dst || !cfg || !in_vni(from, dst->vni) || from == ifindex)
		return TC_ACT_UNSPEC;
	tuple_len = flow_tuple(skb, &tuple, &proto, NULL, cfg);
	if (!tuple_len || proto != PROTO_UDP)
		return TC_ACT_UNSPEC;

	struct bpf_ct_opts___zoned opts = {
		.netns_id = BPF_F_CURRENT_NETNS,
		.l4proto = proto,
		.ct_zone_id = dst->zone,
		.ct_zone_dir = ZONE_BOTH_DIRECTIONS,
	};
	struct nf_conn *ct = bpf_skb_ct_lookup(skb, &tuple, tuple_len, &opts, sizeof(opts));
	unsigned long status;

	if (!ct)
		return TC_ACT_UNSPEC;
	status = ct->status;
	bpf_ct_release(ct);
	if ((status & IPS_SEEN_REPLY) || opts.dir != IP_CT_DIR_ORIGINAL)
		return TC_ACT_UNSPEC;
	key.zone = dst->zone;
	key.proto = proto;
	__builtin_memcpy(&key.tuple, &tuple, sizeof(key.tuple));
	seen.from = from;
	seen.to = ifindex;
	seen.generation = cfg->generation;
	bpf_map_update_elem(&admissions, &key, &seen, BPF_ANY);
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
