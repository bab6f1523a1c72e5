// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcptrace kernel side: every TCP state change goes into one ring buffer,
 * named after the process that owns the socket.
 *
 * Each feature has several programs (tp_btf, raw_tp, classic tracepoint); the
 * loader keeps the best one the kernel accepts and prunes the others.
 *
 * Ownership is recorded where the kernel proves it: connect() and listen()
 * run in the owner; so does the application's own close() (ESTABLISHED ->
 * FIN_WAIT1, CLOSE_WAIT -> LAST_ACK); accept() is seen at its syscall exit; a
 * new connection belongs to its listener's owner until accepted. Everything
 * else (changes in softirq, or on loopback in the peer's system call) reads
 * the recorded owner. Forks and exits are tracked so an owner that may have
 * handed the socket on, or gone, is flagged for user space to resolve.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_FIN_WAIT2 = 5,
	TCP_TIME_WAIT = 6,
	TCP_CLOSE = 7,
	TCP_CLOSE_WAIT = 8,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
	TCP_CLOSING = 11,
	TCP_NEW_SYN_RECV = 12,
};

volatile const struct config cfg = {};

/*
 * tp_btf programs get the kernel's typed pointers: a field is one plain load,
 * which the verifier guards, where raw_tp and classic tracepoint programs pay
 * a bpf_probe_read_kernel() call per field (measured on 6.18: ~55 ns each, the
 * larger part of a state change's cost). Shared code takes `btf`, a constant
 * at every call site, so the branch a program cannot use is compiled out.
 */
#define READ(btf, src, field) ((btf) ? (src)->field : BPF_CORE_READ(src, field))

/* Put these in BTF, so bpf2go generates their Go types. */
const struct sock_fd *unused_sock_fd __attribute__((unused));
const struct drop *unused_drop __attribute__((unused));
const struct listener *unused_listener __attribute__((unused));
const enum drop_kind *unused_drop_kind __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

/* One ring buffer per CPU, where the kernel takes ring buffers inside a map
 * (cfg.cpu_rings): each CPU writes its own, and the reader merges them by
 * time. A ring shared by all CPUs has its lock and positions move between
 * them at every record (~150 ns of a ~270 ns write, measured on 2 CPUs in a
 * connection storm). The loader sizes both; events is the one shared ring
 * otherwise. */
struct ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1); /* the possible CPUs, set by the loader */
	__type(key, __u32);
	__array(values, struct ring);
} cpu_events SEC(".maps");

/* Ring-buffer records that found no room; read and reported by Go. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Per socket: when it entered its state, and its owner. An entry stays after
 * its socket's final CLOSE, marked closed, for the next socket at the same
 * address to take over in place: the slab soon hands a freed socket's address
 * to a new one, and a lookup there costs much less than a delete at every CLOSE
 * and an insert at every birth (~180 ns per state change in a storm). The
 * sweep (sweep_socks) deletes those not taken over within a second; the LRU
 * bounds whatever is missed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct sock_info);
} socks SEC(".maps");

struct listen_key {
	__u32 netns;
	__u16 port;
	__u16 pad;
};

/* Owner of each listening port, inherited by its new connections. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listen_key);
	__type(value, struct owner);
} listeners SEC(".maps");

/* The listening sockets at each port, for a packet that names only the port
 * (syn_consumed); kept with listen_drops' entries (watch_listener). A port
 * can have several: SO_REUSEPORT groups (nginx, Envoy), or one listener per
 * local address. Past LISTEN_SLOTS, the newest takes the last slot. */
#define LISTEN_SLOTS 4

struct listen_slots {
	__u64 sk[LISTEN_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct listen_key);
	__type(value, struct listen_slots);
} listen_socks SEC(".maps");

/* When each process last forked a new process or exec'd (either may change
 * who holds its sockets, or its name), and when it exited: one map, so a state
 * change pays one lookup for both. */
struct fate {
	__u64 changed;
	__u64 exited;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct fate);
} fates SEC(".maps");

/* Set by the loader once the sweep of closed sockets' entries is attached;
 * until then (or without it) an entry goes at its socket's final CLOSE. */
volatile __u8 keep_closed;

/* A closed socket's entry older than this goes at the next sweep. */
#define CLOSED_KEEP_NS 1000000000ULL

/* Entries kept at their socket's close, ever: while it stays the same the
 * sweep has nothing new to look for (a walk of the table costs ~3 ms). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} closes_kept SEC(".maps");

/* The latest fork, exec or exit noted in fates: an owner recorded after it
 * cannot have changed or exited since, and needs no lookup (a hash lookup was a
 * sixth of a state change's cost). */
volatile __u64 last_fate_ns;

/*
 * Per listener: how much of its sk_drops counter has been reported. Drops are
 * counted from sk_drops (what tcp_listendrop() bumps beside ListenDrops), so
 * the stream adds up exactly; a drop reported per packet advances it first.
 */
#define LISTENERS_MAX 16384

struct listen_count {
	__u32 seen;    /* sk_drops reported so far */
	__u8 flood_before; /* synflood_warned was set at first sight */
	__u8 flood_told;   /* a DROP_SYN_FLOOD record went out */
	__u8 pad[2];
	/* When a watched queue check last began at a full queue: a drop it makes
	 * is counted before its exit reports the packet, so the walk leaves the
	 * listener alone for a moment (cfg.watch_busy_ns) rather than count it. */
	__u64 busy_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LISTENERS_MAX);
	__type(key, __u64);
	__type(value, struct listen_count);
} listen_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} filter_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} filter_ports SEC(".maps");

/*
 * Events whose socket is not fully set up yet are held here until it is:
 * connect() moves a socket to SYN_SENT before it picks the local port (held
 * until connect() returns or the next state change); before 6.x, a new
 * connection enters SYN_RECV before its remote address is copied in (held
 * until the next state change, a moment later).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* skaddr */
	__type(value, struct event);
} pending_connects SEC(".maps");

/* Events in pending_connects, near enough: the tracer walks them for late
 * ones only when there are any (an empty walk costs ~0.3 ms). Per CPU, added
 * where an event is held and taken off where it is sent: only the sum means
 * anything (a shared counter would move between the CPUs at every connect).
 * An LRU eviction leaves it high, which costs only walks. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} held SEC(".maps");

static __always_inline void count_held(__s64 d)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&held, &zero);
	if (n)
		__sync_fetch_and_add(n, d);
}

/*
 * The connect() on each CPU whose SYN_SENT event waits for its port, for its
 * system call exit to send: a per-CPU slot, not a hash (three hash operations
 * per connect cost more than the rest of its exit). A non-blocking connect()
 * returns on the CPU it started on; a blocking one has its event sent by the
 * handshake's own change first. Should a slot be overwritten (a preempted
 * connect()) or left behind (a migration), the event waits for the socket's
 * next change, as it does where no system call exit can be hooked.
 */
struct connect_slot {
	__u64 pid_tgid; /* the connecting thread */
	__u64 skaddr;   /* 0: nothing waits */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct connect_slot);
} connecting SEC(".maps");

static __always_inline struct connect_slot *connect_slot(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&connecting, &zero);
}

/*
 * Sockets whose recorded history skips a state: a change came from another
 * state than the one last recorded, or a new life began at the address of a
 * socket whose final CLOSE was never seen. The kernel made changes that no
 * program here saw; some it counted as skipped runs, some it did not.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gaps SEC(".maps");

static __always_inline void count_in(void *map)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(map, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

static __always_inline void count_lost(void)
{
	count_in(&lost);
}

/*
 * Wake the reader once, as the data waiting crosses the mark; otherwise it
 * drains on a timer. Waking for every record past the mark would raise an
 * interrupt per record, and the softirq run on its way out nests inside this
 * program, which the kernel then skips.
 */
static __always_inline void output_to(void *ring, void *rec, __u64 size)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (avail < cfg.wakeup_bytes && avail + size + 8 >= cfg.wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(ring, rec, size, flags))
		count_lost();
}

static __always_inline void output_record(void *rec, __u64 size)
{
	if (!cfg.cpu_rings) {
		output_to(&events, rec, size);
		return;
	}
	__u32 cpu = bpf_get_smp_processor_id();
	void *ring = bpf_map_lookup_elem(&cpu_events, &cpu);
	if (ring)
		output_to(ring, rec, size);
	else
		count_lost();
}

static __always_inline void output(struct event *e)
{
	if (cfg.emit_states)
		output_record(e, sizeof(*e));
}

static __always_inline bool port_wanted(const struct event *e)
{
	if (!cfg.filter_ports)
		return true;
	return bpf_map_lookup_elem(&filter_ports, &e->lport) ||
	       bpf_map_lookup_elem(&filter_ports, &e->rport);
}

/* An owner the kernel side cannot vouch for is left to user space to filter. */
static __always_inline bool pid_wanted(const struct event *e)
{
	if (!cfg.filter_pids || (e->flags & (EVENT_OWNER_UNKNOWN | EVENT_OWNER_UNVERIFIED)))
		return true;
	return bpf_map_lookup_elem(&filter_pids, &e->owner.pid);
}

static __always_inline __u16 local_port(const struct sock *sk, const bool btf)
{
	/* inet_sport outlives skc_num, which inet_put_port() clears before CLOSE;
	 * but it lies past struct sock, out of a typed load's reach. */
	if (btf) {
		__u16 num = sk->__sk_common.skc_num;
		if (num)
			return num;
	}
	return bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
}

/* The port a socket is bound to now: at a life's start, inet_sport may
 * still hold the previous life's port (a second connect() after a refused
 * one), so only skc_num counts. */
static __always_inline __u16 bound_port(const struct sock *sk, const bool btf)
{
	return READ(btf, sk, __sk_common.skc_num);
}

static __always_inline __u16 remote_port(const struct sock *sk, const bool btf)
{
	return bpf_ntohs(READ(btf, sk, __sk_common.skc_dport));
}

static __always_inline __u32 netns_of(const struct sock *sk, const bool btf)
{
	if (btf)
		return sk->__sk_common.skc_net.net->ns.inum;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline bool is_tcp(const struct sock *sk, const bool btf)
{
	return READ(btf, sk, sk_protocol) == IPPROTO_TCP;
}

static __always_inline void owner_is_current(struct owner *o, __u64 now)
{
	o->since = now;
	o->pid = bpf_get_current_pid_tgid() >> 32;
	o->uid = (__u32)bpf_get_current_uid_gid();
	o->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&o->comm, sizeof(o->comm));
}

static __always_inline bool current_is_user_task(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return !(BPF_CORE_READ(task, flags) & PF_KTHREAD);
}

/* Flags for what the kernel side knows of the owner's fate since it was recorded. */
static __always_inline __u32 owner_flags(const struct owner *o)
{
	if (!o->pid)
		return EVENT_OWNER_UNKNOWN;
	if (last_fate_ns <= o->since)
		return 0;
	__u32 pid = o->pid, flags = 0;
	struct fate *f = bpf_map_lookup_elem(&fates, &pid);
	if (!f)
		return 0;
	if (f->exited > o->since)
		flags |= EVENT_OWNER_EXITED;
	if (f->changed > o->since)
		flags |= EVENT_OWNER_UNVERIFIED;
	return flags;
}

/*
 * The application closes the socket (close() or shutdown()): the closer owns
 * it now. Most often that is the process recorded, unchanged since (no fork,
 * exec, rename or exit): then only the time is new, and its name, user and
 * cgroup are not read again (~150 ns, at two closes per connection). A
 * thread of it closing keeps the name recorded, the process's as far as
 * tcptrace knows it. A kernel thread's close leaves the owner as it was.
 */
static __always_inline void owner_closing(struct owner *o, __u64 now)
{
	if (o->pid && o->pid == bpf_get_current_pid_tgid() >> 32 && !owner_flags(o)) {
		o->since = now;
		return;
	}
	if (current_is_user_task())
		owner_is_current(o, now);
}

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	__u64 lo = *(const __u64 *)a;
	__u32 mid = *(const __u32 *)(a + 8);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

/* Reads sk's family and addresses; a dual-stack socket talking IPv4 comes
 * out as IPv4. Returns the family, 0 for anything but IPv4 and IPv6. */
static __always_inline __u16 read_addrs(const struct sock *sk, __u8 *saddr, __u8 *daddr, const bool btf)
{
	__u16 family = READ(btf, sk, __sk_common.skc_family);
	if (family == AF_INET) {
		*(__u32 *)saddr = READ(btf, sk, __sk_common.skc_rcv_saddr);
		*(__u32 *)daddr = READ(btf, sk, __sk_common.skc_daddr);
		return family;
	}
	if (family != AF_INET6)
		return 0;
	if (btf) {
		__builtin_memcpy(saddr, &sk->__sk_common.skc_v6_rcv_saddr, 16);
		__builtin_memcpy(daddr, &sk->__sk_common.skc_v6_daddr, 16);
	} else {
		BPF_CORE_READ_INTO((struct in6_addr *)saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)daddr, sk, __sk_common.skc_v6_daddr);
	}
	if (is_v4_mapped(saddr) || is_v4_mapped(daddr)) {
		*(__u32 *)saddr = *(__u32 *)(saddr + 12);
		*(__u32 *)daddr = *(__u32 *)(daddr + 12);
		__builtin_memset(saddr + 4, 0, 12);
		__builtin_memset(daddr + 4, 0, 12);
		return AF_INET;
	}
	return family;
}

/* Fills in what a held event waited for, from sk: only what was missing (a
 * refused connect() has cleared the remote port by the time its exit sends
 * the event). */
static __always_inline void complete_held(struct event *e, const struct sock *sk, const bool btf)
{
	if (!e->lport)
		e->lport = local_port(sk, btf);
	if (!e->rport) {
		e->rport = remote_port(sk, btf);
		__u16 family = read_addrs(sk, e->saddr, e->daddr, btf);
		if (family)
			e->family = family;
	}
}

/* Takes the event held for skaddr out of pending_connects: true if this
 * caller deleted it, and so alone sends it (the walk of late held events may
 * race a change or a system call exit for it). held gets a copy first: a
 * deleted element may be reused at once. */
static __always_inline bool take_held(__u64 skaddr, struct event *held)
{
	struct event *e = bpf_map_lookup_elem(&pending_connects, &skaddr);
	if (!e)
		return false;
	__builtin_memcpy(held, e, sizeof(*held));
	if (bpf_map_delete_elem(&pending_connects, &skaddr))
		return false;
	count_held(-1);
	return true;
}

/* Emit a held event, now that sk has its ports and addresses. */
static __always_inline void flush_pending(const struct sock *sk, __u64 skaddr, const bool btf)
{
	struct event held;
	if (!take_held(skaddr, &held))
		return;
	complete_held(&held, sk, btf);
	if (port_wanted(&held))
		output(&held);
	/* Sent: the connect()'s exit has nothing left to look for. */
	struct connect_slot *c = connect_slot();
	if (c && c->skaddr == skaddr)
		c->skaddr = 0;
}

/* An event still held for an earlier socket at this address (the runs that
 * would have flushed it were skipped): it goes out as it was, not lost.
 * Returns whether there was one (gone now, whoever sent it). */
static __always_inline bool flush_stale(__u64 skaddr)
{
	if (!bpf_map_lookup_elem(&pending_connects, &skaddr))
		return false;
	struct event held;
	if (take_held(skaddr, &held) && port_wanted(&held))
		output(&held);
	return true;
}

/*
 * A new life at an address whose entry is still there, and is cleared for it
 * in place: the earlier socket's, closed, or one whose final CLOSE no program
 * saw. Its held event goes out; a new life's start counts the old one's unseen
 * end.
 */
static __always_inline void reborn(const struct sock *sk, __u64 skaddr, struct sock_info *old, bool born,
				   const bool btf)
{
	struct event *e = old->held ? bpf_map_lookup_elem(&pending_connects, &skaddr) : NULL;
	/* A connect() whose exit was missed (it migrated) still waits for
	 * its port. Unbound at its new life's start (CLOSE->SYN_SENT comes
	 * before the new port is picked), a socket that connects again still
	 * holds its previous life's port in inet_sport; a new socket at this
	 * address holds 0 there. */
	if (e && !e->lport && !bound_port(sk, btf))
		e->lport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	if (e)
		flush_stale(skaddr);
	if (born && old->traced && old->state && old->state != TCP_CLOSE)
		count_in(&gaps);
	__builtin_memset(old, 0, sizeof(*old));
}

/*
 * No socket ever changes into TIME_WAIT: tcp_time_wait() puts a timewait
 * socket in the connection's place and closes the full socket, FIN_WAIT2 or
 * CLOSING -> CLOSE. A reset or a timeout sets sk_err first. (Also without an
 * error, and so also counted here: an abort of a socket already in FIN_WAIT2
 * or CLOSING by its application, and a timewait table too full to take one.)
 */
static __always_inline bool closed_into_time_wait(int oldstate, int newstate, __u16 error)
{
	return newstate == TCP_CLOSE && (oldstate == TCP_FIN_WAIT2 || oldstate == TCP_CLOSING) && error == 0;
}

/* Whether a change from oldstate to newstate is wanted by --state and
 * friends; --state TIME_WAIT selects the changes that hand a connection to
 * a timewait socket, --errors the closes with an error. */
static __always_inline bool change_wanted(int oldstate, int newstate, __u32 flags, __u16 error)
{
	if (cfg.errors_only && !error)
		return false;
	if (!cfg.state_mask && !cfg.old_state_mask)
		return true;
	if ((flags & EVENT_TIME_WAIT) && (cfg.state_mask & (1u << TCP_TIME_WAIT)))
		return true;
	return (cfg.state_mask & (1u << (newstate & 31))) || (cfg.old_state_mask & (1u << (oldstate & 31)));
}

/* The listener fields of a drop record; 0 if the socket is not wanted. */
static __always_inline bool fill_listener(struct drop *d, const struct sock *sk, const struct owner *o)
{
	d->family = read_addrs(sk, d->saddr, d->daddr, false);
	if (!d->family || (cfg.family && cfg.family != d->family))
		return false;
	__builtin_memset(d->daddr, 0, sizeof(d->daddr));
	d->type = RECORD_DROP;
	d->skaddr = (__u64)sk;
	d->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	d->lport = local_port(sk, false);
	d->backlog = BPF_CORE_READ(sk, sk_ack_backlog);
	d->max_backlog = BPF_CORE_READ(sk, sk_max_ack_backlog);
	d->syn_queue = BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter);
	d->syncookies = BPF_CORE_READ(sk, __sk_common.skc_net.net, ipv4.sysctl_tcp_syncookies);
	if (o)
		d->owner = *o;
	return true;
}

static __always_inline bool drop_wanted(const struct drop *d)
{
	if (!cfg.emit_drops)
		return false;
	if (cfg.filter_pids && d->owner.pid && !bpf_map_lookup_elem(&filter_pids, &d->owner.pid))
		return false;
	if (cfg.filter_ports && !bpf_map_lookup_elem(&filter_ports, &d->lport) &&
	    !(d->rport && bpf_map_lookup_elem(&filter_ports, &d->rport)))
		return false;
	return true;
}

/* Start counting a listener's drops from now (first sight). */
static __always_inline void watch_listener(const struct sock *sk)
{
	__u64 skaddr = (__u64)sk;
	struct listen_count lc = {
		.seen = BPF_CORE_READ(sk, sk_drops.counter),
		.flood_before = BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.synflood_warned),
	};
	bpf_map_update_elem(&listen_drops, &skaddr, &lc, BPF_NOEXIST);
	struct listen_key lk = { .netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum),
				 .port = local_port(sk, false) };
	struct listen_slots *ls = bpf_map_lookup_elem(&listen_socks, &lk);
	if (!ls) {
		struct listen_slots first = { .sk = { skaddr } };
		/* BPF_NOEXIST: another listener may have just come; join it. */
		if (!bpf_map_update_elem(&listen_socks, &lk, &first, BPF_NOEXIST))
			return;
		ls = bpf_map_lookup_elem(&listen_socks, &lk);
		if (!ls)
			return;
	}
	/* Plain stores (no compare-and-swap before 5.12): two listeners on one
	 * port at the same moment may take one slot; the loser's drops still
	 * come counted. */
	int slot = LISTEN_SLOTS - 1;
#pragma unroll
	for (int i = LISTEN_SLOTS - 1; i >= 0; i--) {
		if (ls->sk[i] == skaddr)
			return;
		if (!ls->sk[i])
			slot = i;
	}
	ls->sk[slot] = skaddr;
}

/* A listener closes: its slot is free again, and its port's entry goes with
 * the last. */
static __always_inline void unwatch_listener(struct listen_key *lk, __u64 skaddr)
{
	struct listen_slots *ls = bpf_map_lookup_elem(&listen_socks, lk);
	if (!ls)
		return;
	bool empty = true;
#pragma unroll
	for (int i = 0; i < LISTEN_SLOTS; i++) {
		if (ls->sk[i] == skaddr)
			ls->sk[i] = 0;
		else if (ls->sk[i])
			empty = false;
	}
	if (empty)
		bpf_map_delete_elem(&listen_socks, lk);
}

/* Report what sk_drops counted beyond seen, the part already reported. */
static __always_inline void report_counted_drops(const struct sock *sk, __u32 *seen, const struct owner *o, __u64 now)
{
	__u32 drops = BPF_CORE_READ(sk, sk_drops.counter);
	/* A per-packet report may be a moment ahead of sk_drops: wait for it. */
	if ((__s32)(drops - *seen) <= 0)
		return;
	struct drop d = {};
	d.count = drops - *seen;
	*seen = drops;
	if (!fill_listener(&d, sk, o) || !drop_wanted(&d))
		return;
	d.ts_ns = now;
	d.kind = DROP_COUNTED;
	output_record(&d, sizeof(d));
}

/* Report the kernel's SYN-flood flag on a listener, once: at the listener
 * walk, and at the listener's close (a flag set since the last walk). */
static __always_inline void report_flood(const struct sock *sk, struct listen_count *lc, const struct owner *o, __u64 now)
{
	if (lc->flood_told ||
	    !BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.synflood_warned))
		return;
	lc->flood_told = 1;
	struct drop d = {};
	if (!fill_listener(&d, sk, o) || !drop_wanted(&d))
		return;
	d.ts_ns = now;
	d.kind = DROP_SYN_FLOOD;
	d.reason = lc->flood_before;
	output_record(&d, sizeof(d));
}

static __always_inline int handle_state(const struct sock *sk, int oldstate, int newstate, const bool btf)
{
	if (!is_tcp(sk, btf))
		return 0;
	if (cfg.test_unseen_state && newstate == cfg.test_unseen_state)
		return 0;

	struct event e = {};
	e.family = read_addrs(sk, e.saddr, e.daddr, btf);
	if (!e.family)
		return 0;
	/* A socket's family never changes: skip foreign ones before any map work. */
	if (cfg.family && cfg.family != e.family)
		return 0;

	__u64 skaddr = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	e.netns = netns_of(sk, btf);
	e.lport = oldstate == TCP_CLOSE ? bound_port(sk, btf) : local_port(sk, btf);

	/* Socket bookkeeping runs for every socket, filtered or not. A socket
	 * leaving CLOSE, or a new connection's socket, starts a new life: nothing
	 * recorded at the same address before may carry over. */
	bool born = oldstate == TCP_CLOSE || (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);
	struct sock_info fresh = {};
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
	/* A new life takes over the entry at its address; so does a socket
	 * that finds a closed one's entry there (its start went unseen). */
	if (si && (born || si->state == TCP_CLOSE))
		reborn(sk, skaddr, si, born, btf);
	if (!si)
		si = &fresh;
	__u8 last = si->state;
	bool was_held = si->held;
	if (si->state_ts) {
		e.in_state_ns = now - si->state_ts;
		e.flags |= EVENT_IN_STATE_KNOWN;
	}
	si->state_ts = now;

	struct listen_key lk = { .netns = e.netns, .port = e.lport };
	if (oldstate == TCP_CLOSE && (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN)) {
		owner_is_current(&si->owner, now);
	} else if ((oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1) ||
		   (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK)) {
		/* Only the application's close() or shutdown() makes these. */
		owner_closing(&si->owner, now);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV) {
		struct owner *lo = bpf_map_lookup_elem(&listeners, &lk);
		if (lo) {
			si->owner = *lo;
			si->owner.since = now;
		}
	}
	if (newstate == TCP_LISTEN) {
		bpf_map_update_elem(&listeners, &lk, &si->owner, BPF_ANY);
		bpf_map_delete_elem(&listen_drops, &skaddr); /* a reused address */
		watch_listener(sk);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&listeners, &lk);
		unwatch_listener(&lk, skaddr);
		/* The last drops since the previous poll must not go with it,
		 * nor a SYN-flood flag set since. */
		struct listen_count *lc = bpf_map_lookup_elem(&listen_drops, &skaddr);
		if (lc) {
			report_counted_drops(sk, &lc->seen, &si->owner, now);
			report_flood(sk, lc, &si->owner, now);
		}
		bpf_map_delete_elem(&listen_drops, &skaddr);
	}

	e.owner = si->owner;
	e.flags |= owner_flags(&si->owner);
	e.rport = remote_port(sk, btf);
	/* What the socket died of: tcp_reset() (ECONNRESET, ECONNREFUSED in
	 * SYN_SENT, EPIPE in CLOSE_WAIT), tcp_write_err() (ETIMEDOUT after the
	 * retransmissions, SYN retries or keepalive probes ran out, or the soft
	 * error an ICMP message left) and ICMP errors in SYN_SENT set sk_err
	 * before tcp_done() closes it; the application's own close or abort
	 * leaves it 0. A connect() that finds no free local port (ephemeral
	 * ports exhausted) closes its socket before any port is assigned and
	 * returns EADDRNOTAVAIL without setting sk_err: the only way from
	 * SYN_SENT to CLOSE with no port. */
	if (newstate == TCP_CLOSE) {
		e.error = READ(btf, sk, sk_err);
		if (!e.error && oldstate == TCP_SYN_SENT && !e.lport)
			e.error = EADDRNOTAVAIL;
		/* What the connection retransmitted in its life (SYNs too; a
		 * SYN-ACK's count comes over from its request socket): past
		 * struct sock, out of a typed load's reach. */
		e.retrans = BPF_CORE_READ((const struct tcp_sock *)sk, total_retrans);
	}
	if (closed_into_time_wait(oldstate, newstate, e.error))
		e.flags |= EVENT_TIME_WAIT;

	/* An event that must wait for its socket's port or address (and the
	 * port filter with it); whether one waits is kept with the socket, so
	 * the changes that would send it look for it only then. */
	bool late = (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT && e.lport == 0) ||
		    (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV && e.rport == 0);
	bool traced = pid_wanted(&e) && (late || port_wanted(&e));
	bool wanted = traced && change_wanted(oldstate, newstate, e.flags, e.error);
	bool hold = wanted && late;
	/* Changed from another state than the one last recorded: the kernel
	 * made a change in between that no program saw. */
	if (traced && last && last != oldstate)
		count_in(&gaps);
	si->state = newstate;
	si->held = hold;
	si->traced = traced;

	/* Keep the stream in order: a held event goes out before what follows it
	 * (at the final CLOSE at the latest, if the runs that flush it were skipped). */
	if (was_held && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV || newstate == TCP_CLOSE))
		flush_pending(sk, skaddr, btf);

	if (newstate == TCP_CLOSE) {
		if (si != &fresh && !keep_closed)
			bpf_map_delete_elem(&socks, &skaddr);
		else if (si != &fresh)
			count_in(&closes_kept);
	} else if (si == &fresh) {
		bpf_map_update_elem(&socks, &skaddr, &fresh, BPF_ANY);
	}

	if (!wanted)
		return 0;

	e.type = RECORD_STATE;
	e.ts_ns = now;
	e.skaddr = skaddr;
	e.oldstate = oldstate;
	e.newstate = newstate;

	if (hold) {
		if (newstate == TCP_SYN_SENT)
			e.flags |= EVENT_PORT_LATE;
		if (!bpf_map_update_elem(&pending_connects, &skaddr, &e, BPF_NOEXIST) ||
		    (flush_stale(skaddr) && !bpf_map_update_elem(&pending_connects, &skaddr, &e, BPF_NOEXIST))) {
			count_held(1);
			if (newstate == TCP_SYN_SENT) {
				struct connect_slot *c = connect_slot();
				if (c) {
					c->pid_tgid = bpf_get_current_pid_tgid();
					c->skaddr = skaddr;
				}
			}
			return 0;
		}
		/* No room to hold it: send it now, port unknown, rather than lose it. */
	}
	output(&e);
	return 0;
}

/*
 * The kernel does not re-enter a tp_btf or raw_tp program on a CPU where it is
 * running (6.10+; it counts a recursion miss): a state change in a softirq
 * that interrupts the state program (on loopback, a packet processed on the
 * way out of the system call whose change is being recorded) would be lost.
 * So three programs share the tracepoint, in this order: a short one pushes
 * the change's token on a per-CPU stack; the state program records the change
 * and pops its token; a last short one finds its token still on top only if
 * the state program was skipped, records the change itself, and pops. Short
 * programs are rarely interrupted, and an interrupted one misses only changes
 * the state program records (on older kernels, which run nested programs, the
 * state program always pops its own token). No change is sent twice.
 * (Two programs, the state program leaving a token for each change it
 * recorded, would save a run per change but not be safe: the state programs
 * of changes in a softirq that interrupts the catch program before it looks
 * leave tokens above its own, and enough of them push it out of the stack,
 * so that its change goes out twice. Here each state program takes its own.)
 * The three attach one after another, and a change that reached only the push
 * program would leave a token that no later change takes off (or, at a reused
 * address, one that a later change takes for its own and sends twice): so
 * the push program does nothing until the loader arms it, once all three are
 * attached. Started during a connection storm, tcptrace otherwise left 1-3
 * such tokens per CPU.
 */
#define NEST_DEPTH 4

volatile __u8 nest_armed;

struct change_token {
	__u64 sk;
	__u32 states;
	__u32 pad;
};

struct state_nest {
	struct change_token token[NEST_DEPTH];
	__u32 depth;
	__u32 pad;
	__u64 caught; /* changes the last program recorded */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state_nest);
} nesting SEC(".maps");

static __always_inline __u32 change_states(int oldstate, int newstate)
{
	return (oldstate & 0xff) << 8 | (newstate & 0xff);
}

static __always_inline struct state_nest *nest(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&nesting, &zero);
}

/* Pops the change's token if it is on top of n's stack. */
static __always_inline bool nest_pop(struct state_nest *n, const struct sock *sk, int oldstate, int newstate)
{
	__u32 d = n->depth;
	if (d == 0 || d > NEST_DEPTH)
		return false;
	struct change_token *t = &n->token[(d - 1) & (NEST_DEPTH - 1)];
	if (t->sk != (__u64)sk || t->states != change_states(oldstate, newstate))
		return false;
	n->depth = d - 1;
	return true;
}

static __always_inline int state_push(const struct sock *sk, int oldstate, int newstate)
{
	if (!nest_armed)
		return 0;
	struct state_nest *n = nest();
	if (!n)
		return 0;
	__u32 d = n->depth;
	if (d < NEST_DEPTH) {
		/* The slot is emptied and claimed before it is filled. Where the
		 * kernel runs nested programs (before 6.10), a change in a softirq
		 * that interrupted between filling and claiming put its own token
		 * in the slot and popped it; the claim then left that token on the
		 * stack, and a later change of that socket with the same states (a
		 * reused address) took it and went out twice (seen on 5.10). Now a
		 * nested change pushes above the claimed slot, which holds no
		 * socket or this change's. */
		struct change_token *t = &n->token[d & (NEST_DEPTH - 1)];
		t->sk = 0;
		asm volatile("" ::: "memory"); /* the stores stay in this order */
		n->depth = d + 1;
		asm volatile("" ::: "memory");
		t->states = change_states(oldstate, newstate);
		asm volatile("" ::: "memory");
		t->sk = (__u64)sk;
	}
	return 0;
}

static __always_inline int state_record(const struct sock *sk, int oldstate, int newstate, const bool btf)
{
	handle_state(sk, oldstate, newstate, btf);
	struct state_nest *n = nest();
	if (n)
		nest_pop(n, sk, oldstate, newstate);
	return 0;
}

static __always_inline int state_catch(const struct sock *sk, int oldstate, int newstate, const bool btf)
{
	struct state_nest *n = nest();
	if (!n || !nest_pop(n, sk, oldstate, newstate))
		return 0;
	n->caught++;
	return handle_state(sk, oldstate, newstate, btf);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf_push, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_push(sk, oldstate, newstate);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_record(sk, oldstate, newstate, true);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf_catch, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_catch(sk, oldstate, newstate, true);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_push, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_push(sk, oldstate, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_record(sk, oldstate, newstate, false);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_catch, const struct sock *sk, const int oldstate, const int newstate)
{
	return state_catch(sk, oldstate, newstate, false);
}

SEC("tracepoint/sock/inet_sock_set_state")
int state_tp(struct trace_event_raw_inet_sock_set_state *args)
{
	return handle_state((const struct sock *)args->skaddr, args->oldstate, args->newstate, false);
}

/*
 * Retransmission records. The ends of the connection come from s, a socket
 * or a handshake's request (whose sock_common comes first, as in struct
 * sock: the same reads serve; its local port is only in skc_num); false when
 * the family or port filters leave it out.
 */
static __always_inline bool retrans_ends(struct event *e, const struct sock *s, const bool request, const bool btf)
{
	e->family = read_addrs(s, e->saddr, e->daddr, btf);
	if (!e->family || (cfg.family && cfg.family != e->family))
		return false;
	e->lport = request ? bound_port(s, btf) : local_port(s, btf);
	e->rport = remote_port(s, btf);
	e->netns = netns_of(s, btf);
	return port_wanted(e);
}

/* Sends e, a record of kind type about socket skaddr (in state), owned by o
 * (NULL: unknown), unless --pid leaves it out. n is the record's count
 * (retransmissions) or reason (resets). */
static __always_inline void owned_out(struct event *e, const struct owner *o, enum record_type type, __u64 skaddr,
				      __u8 state, __u32 n)
{
	if (o) {
		e->owner = *o;
		e->flags = owner_flags(o);
	} else {
		e->flags = EVENT_OWNER_UNKNOWN;
	}
	if (!pid_wanted(e))
		return;
	e->type = type;
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = skaddr;
	e->oldstate = state;
	e->retrans = n; /* reason shares its place */
	output_record(e, sizeof(*e));
}

/*
 * A segment the kernel retransmitted (tcp:tcp_retransmit_skb: data, SYNs and
 * FINs; SYN-ACKs have a tracepoint of their own, below). It runs in the timer's
 * softirq or in whatever context acknowledgments arrive in, never surely in
 * the owner: the owner is the one the socket table recorded.
 */
static __always_inline int handle_retrans(const struct sock *sk, const bool btf)
{
	struct event e = {};
	if (!is_tcp(sk, btf) || !retrans_ends(&e, sk, false, btf))
		return 0;
	__u64 skaddr = (__u64)sk;
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
	/* A closed entry is an earlier socket's at this address. Past struct
	 * sock, total_retrans counts this retransmission already. */
	owned_out(&e, si && si->state != TCP_CLOSE ? &si->owner : NULL, RECORD_RETRANS, skaddr,
		  READ(btf, sk, __sk_common.skc_state), BPF_CORE_READ((const struct tcp_sock *)sk, total_retrans));
	return 0;
}

/*
 * A SYN-ACK sent again (tcp:tcp_retransmit_synack, only after it went out):
 * the handshake has no socket of its own yet, so the record names sk, the
 * listener (or a Fast Open child), whose owner the listener table holds,
 * and the request's addresses and ports.
 */
static __always_inline int handle_synack(const struct sock *sk, const struct request_sock *req)
{
	struct event e = {};
	if (!retrans_ends(&e, (const struct sock *)req, true, false))
		return 0;
	struct listen_key lk = { .netns = e.netns, .port = e.lport };
	/* num_retrans counts this one once the tracepoint has fired (inet_rtx_syn_ack). */
	owned_out(&e, bpf_map_lookup_elem(&listeners, &lk), RECORD_RETRANS, (__u64)sk, TCP_SYN_RECV,
		  BPF_CORE_READ(req, num_retrans) + 1);
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(synack_btf, const struct sock *sk, const struct request_sock *req)
{
	return handle_synack(sk, req);
}

SEC("raw_tp/tcp_retransmit_synack")
int BPF_PROG(synack_raw, const struct sock *sk, const struct request_sock *req)
{
	return handle_synack(sk, req);
}

/* Newer kernels fire the tracepoint for failed attempts too, with their error
 * as a third argument (-EBUSY: the original still queued below TCP, ...);
 * those sent nothing, and RetransSegs does not count them. The loader picks
 * the variant that matches the kernel's tracepoint (its BTF says), and
 * attaches it only for --events retransmits. */
SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retrans_btf, const struct sock *sk, const void *skb)
{
	return handle_retrans(sk, true);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(retrans_btf_err, const struct sock *sk, const void *skb, int err)
{
	return err ? 0 : handle_retrans(sk, true);
}

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(retrans_raw, const struct sock *sk, const void *skb)
{
	return handle_retrans(sk, false);
}

SEC("raw_tp/tcp_retransmit_skb")
int BPF_PROG(retrans_raw_err, const struct sock *sk, const void *skb, int err)
{
	return err ? 0 : handle_retrans(sk, false);
}

/* The TCP socket behind a socket file: for MPTCP (Go 1.24+ listens with MPTCP
 * by default) its first subflow, the TCP socket whose states we see. */
static __always_inline const struct sock *tcp_sock_of_file(struct file *f)
{
	struct socket *sock = BPF_CORE_READ(f, private_data);
	const struct sock *sk = sock ? BPF_CORE_READ(sock, sk) : NULL;
	if (!sk)
		return NULL;
	__u16 protocol = BPF_CORE_READ(sk, sk_protocol);
	if (bpf_core_type_exists(struct mptcp_sock) && protocol == IPPROTO_MPTCP) {
		sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		return sk && is_tcp(sk, false) ? sk : NULL;
	}
	return protocol == IPPROTO_TCP ? sk : NULL;
}

/* The TCP socket behind file descriptor fd of the current process, by probe
 * reads: any kernel. */
static __always_inline const struct sock *sock_of_fd(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return NULL;
	return tcp_sock_of_file(f);
}

/* 6.2+, and only the programs that need it use it (accept_exit_typed,
 * syn_consumed): a kernel pointer read with plain loads (the verifier guards
 * them) rather than a helper call per field. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

/*
 * The same, typed: the task from bpf_get_current_task_btf() (5.11+) and the
 * file, socket and sock cast to their types with bpf_rdonly_cast() (6.2+), so
 * each step is a plain load, not a helper call; only the descriptor's slot,
 * an element of an array of pointers, is a probe read. ~200 ns less per
 * accept() than the probe reads' eight (bpf_stats, a connection storm).
 */
static __always_inline const struct sock *sock_of_fd_typed(long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = task->files->fdt;
	if (!fdt || fd < 0 || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *fp = NULL;
	if (bpf_probe_read_kernel(&fp, sizeof(fp), &fds[fd]) || !fp)
		return NULL;
	struct file *f = bpf_rdonly_cast(fp, bpf_core_type_id_kernel(struct file));
	struct socket *sock = bpf_rdonly_cast(f->private_data, bpf_core_type_id_kernel(struct socket));
	if (!sock)
		return NULL;
	const struct sock *sk = sock->sk;
	if (!sk)
		return NULL;
	__u16 protocol = sk->sk_protocol;
	if (bpf_core_type_exists(struct mptcp_sock) && protocol == IPPROTO_MPTCP) {
		const struct mptcp_sock *msk = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct mptcp_sock));
		sk = msk->first;
		return sk && is_tcp(sk, true) ? sk : NULL;
	}
	return protocol == IPPROTO_TCP ? sk : NULL;
}

/* accept() returned a socket: whoever accepted it owns it now. */
static __always_inline void accepted(long fd, const bool typed)
{
	const struct sock *sk = typed ? sock_of_fd_typed(fd) : sock_of_fd(fd);
	if (!sk)
		return;
	__u64 skaddr = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
	if (si) {
		owner_is_current(&si->owner, now);
		return;
	}
	struct sock_info fresh = {};
	owner_is_current(&fresh.owner, now);
	bpf_map_update_elem(&socks, &skaddr, &fresh, BPF_ANY);
}

/* connect() has picked the local port by the time it returns. */
static __always_inline void connect_returned(void)
{
	struct connect_slot *c = connect_slot();
	if (!c || !c->skaddr || c->pid_tgid != bpf_get_current_pid_tgid())
		return;
	__u64 key = c->skaddr;
	c->skaddr = 0;
	flush_pending((const struct sock *)key, key, false);
}

static __always_inline int handle_sys_exit(struct pt_regs *regs, long ret, const bool btf)
{
	long nr = READ(btf, regs, SYSCALL_NR_FIELD);
	if (nr == NR_accept || nr == NR_accept4) {
		if (ret >= 0)
			accepted(ret, false);
	} else if (nr == NR_connect) {
		connect_returned();
	}
	return 0;
}

/*
 * The same, on the events of these system calls alone: a program on sys_exit
 * runs for every system call of every process (~140 ns each, measured), the
 * kernel's filter in front of these events costs ~10 ns. They need tracefs.
 * accept_exit_tp is attached to sys_exit_accept as well.
 */
SEC("tracepoint/syscalls/sys_exit_accept4")
int accept_exit_tp(struct syscall_exit_record *ctx)
{
	if (ctx->ret >= 0)
		accepted(ctx->ret, false);
	return 0;
}

/* The same with the typed walk, where the kernel has its helper and kfunc. */
SEC("tracepoint/syscalls/sys_exit_accept4")
int accept_exit_typed(struct syscall_exit_record *ctx)
{
	if (ctx->ret >= 0)
		accepted(ctx->ret, true);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int connect_exit_tp(struct syscall_exit_record *ctx)
{
	connect_returned();
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_btf, struct pt_regs *regs, long ret)
{
	return handle_sys_exit(regs, ret, true);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(sys_exit_raw, struct pt_regs *regs, long ret)
{
	return handle_sys_exit(regs, ret, false);
}

/* Notes that tgid forked a new process or exec'd now, or exited. */
static __always_inline void set_fate(__u32 tgid, bool exited)
{
	__u64 now = bpf_ktime_get_ns();
	/* Set first: a reader that finds the entry must not skip the lookup. */
	if (now > last_fate_ns)
		last_fate_ns = now;
	struct fate *f = bpf_map_lookup_elem(&fates, &tgid);
	if (!f) {
		/* BPF_NOEXIST: another CPU may have just added it; use that one. */
		struct fate none = {};
		bpf_map_update_elem(&fates, &tgid, &none, BPF_NOEXIST);
		f = bpf_map_lookup_elem(&fates, &tgid);
		if (!f)
			return;
	}
	/* Racing writers of one process both store "now": either wins. */
	if (exited)
		f->exited = now;
	else
		f->changed = now;
}

/* A new process (not a thread) shares its parent's open sockets. */
static __always_inline int handle_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	if (ptgid == (__u32)BPF_CORE_READ(child, tgid))
		return 0;
	set_fate(ptgid, false);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return handle_fork(parent, child);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(fork_raw, struct task_struct *parent, struct task_struct *child)
{
	return handle_fork(parent, child);
}

/*
 * A process that exec'd has a new name, and its close-on-exec sockets are
 * gone. An owner recorded before must be looked up again: a scan can see a
 * forked child between the close-on-exec (when its parent learns that the exec
 * went through) and the new name, and this event comes after both.
 */
static __always_inline int handle_exec(struct task_struct *p)
{
	set_fate(BPF_CORE_READ(p, tgid), false);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_btf, struct task_struct *p)
{
	return handle_exec(p);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(exec_raw, struct task_struct *p)
{
	return handle_exec(p);
}

/*
 * A process's name changes: at exec, or its main thread's PR_SET_NAME. This
 * runs just before the new name is stored, so a scan that read the old name
 * is older than the mark. (sched_process_exec comes only at the exec's end:
 * a change in between would name the old name, though the kernel has the new.)
 * Other threads' names are not the process's: skipped, or every thread a
 * Java pool names would send owners to be looked up again.
 */
static __always_inline int handle_rename(struct task_struct *task)
{
	if (BPF_CORE_READ(task, group_leader) != task)
		return 0;
	set_fate(BPF_CORE_READ(task, tgid), false);
	return 0;
}

SEC("tp_btf/task_rename")
int BPF_PROG(rename_btf, struct task_struct *task, const char *comm)
{
	return handle_rename(task);
}

SEC("raw_tp/task_rename")
int BPF_PROG(rename_raw, struct task_struct *task, const char *comm)
{
	return handle_rename(task);
}

static __always_inline int handle_exit(struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	if ((__u32)BPF_CORE_READ(p, pid) != tgid)
		return 0;
	set_fate(tgid, true);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(exit_btf, struct task_struct *p)
{
	return handle_exit(p);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(exit_raw, struct task_struct *p)
{
	return handle_exit(p);
}

/*
 * Deletes the entries of sockets closed over a second ago that no new socket
 * took over: kept, they would in time fill the LRU, which then evicts the
 * entries least recently touched, those of long-lived sockets among them.
 * The tracer runs it about once a second. (A new socket that takes an entry
 * over between the check and the delete loses it: its owner is then found by
 * a scan.)
 */
static __always_inline void sweep_one(const __u64 *key, const struct sock_info *si)
{
	if (si->state == TCP_CLOSE && bpf_ktime_get_ns() - si->state_ts >= CLOSED_KEEP_NS) {
		__u64 k = *key;
		bpf_map_delete_elem(&socks, &k);
	}
}

SEC("iter/bpf_map_elem")
int sweep_socks(struct bpf_iter__bpf_map_elem *ctx)
{
	__u64 *key = ctx->key;
	struct sock_info *si = ctx->value;
	if (key && si)
		sweep_one(key, si);
	return 0;
}

static long sweep_socks_cb(void *map, const __u64 *key, struct sock_info *si, void *unused)
{
	sweep_one(key, si);
	return 0;
}

/*
 * Where the kernel refuses map iterators (a BPF LSM's policy can), the tracer
 * runs programs like this one instead, on demand (BPF_PROG_TEST_RUN): each
 * walks the same map with bpf_for_each_map_elem (5.13+). Not preemptible
 * while it walks, unlike an iterator: the iterators come first.
 */
SEC("raw_tp")
int sweep_socks_run(void *ctx)
{
	bpf_for_each_map_elem(&socks, sweep_socks_cb, NULL, 0);
	return 0;
}

/*
 * Held events that no change or system call exit came to send: a blocking
 * connect() returns only when its handshake ends, and to a peer that never
 * answers that is once its SYNs run out (over two minutes by default), its
 * SYN_SENT held all the while. The tracer walks the held events every 250 ms
 * and sends those held over HELD_LATE_NS whose socket has what they waited
 * for: the SYN_SENT of a connect() still blocked goes out then, with its port.
 */
#define HELD_LATE_NS 100000000ULL

static __always_inline void send_late(const __u64 *key, const struct event *e)
{
	if (bpf_ktime_get_ns() - e->ts_ns < HELD_LATE_NS)
		return;
	__u64 skaddr = *key;
	const struct sock *sk = (const struct sock *)skaddr;
	struct event held;
	/* Not yet ready (the port is picked a moment after SYN_SENT): left for
	 * the next walk, or for the change or exit that sends it. */
	if (!local_port(sk, false) || !remote_port(sk, false) || !take_held(skaddr, &held))
		return;
	complete_held(&held, sk, false);
	if (port_wanted(&held))
		output(&held);
}

SEC("iter/bpf_map_elem")
int send_held(struct bpf_iter__bpf_map_elem *ctx)
{
	__u64 *key = ctx->key;
	struct event *e = ctx->value;
	if (key && e)
		send_late(key, e);
	return 0;
}

static long send_held_cb(void *map, const __u64 *key, struct event *e, void *unused)
{
	send_late(key, e);
	return 0;
}

/* The same, run on demand (see sweep_socks_run). */
SEC("raw_tp")
int send_held_run(void *ctx)
{
	bpf_for_each_map_elem(&pending_connects, send_held_cb, NULL, 0);
	return 0;
}

/* Every TCP socket file descriptor of every process: the snapshot of owners. */
SEC("iter/task_file")
int scan_socks(struct bpf_iter__task_file *ctx)
{
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	if (!task || !file)
		return 0;
	if ((BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;
	const struct sock *sk = tcp_sock_of_file(file);
	if (!sk)
		return 0;

	struct sock_fd h = {};
	h.family = read_addrs(sk, h.saddr, h.daddr, false);
	if (!h.family)
		return 0;
	h.sk = (__u64)sk;
	h.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	h.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	if (h.state == TCP_LISTEN)
		watch_listener(sk);
	h.lport = local_port(sk, false);
	h.rport = remote_port(sk, false);
	h.start_time = BPF_CORE_READ(task, start_time);
	h.last_active = BPF_CORE_READ((const struct tcp_sock *)sk, tcp_mstamp) * 1000;
	h.owner.since = bpf_ktime_get_ns();
	h.owner.pid = BPF_CORE_READ(task, tgid);
	h.owner.uid = BPF_CORE_READ(task, cred, uid.val);
	h.owner.cgroup = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_INTO(&h.owner.comm, task, comm);
	bpf_seq_write(seq, &h, sizeof(h));
	return 0;
}

/* The client of a per-packet drop record: where the packet came from. */
static __always_inline void read_client(struct drop *d, const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u16 sport = 0;
	bpf_probe_read_kernel(&sport, sizeof(sport), head + th);
	d->rport = bpf_ntohs(sport);
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IPV6)) {
		bpf_probe_read_kernel(d->daddr, 16, head + nh + 8);
	} else if (d->family == AF_INET6) {
		/* An IPv4 client of a dual-stack listener: ::ffff:a.b.c.d. */
		*(__u32 *)(d->daddr + 8) = bpf_htonl(0x0000ffff);
		bpf_probe_read_kernel(d->daddr + 12, 4, head + nh + 12);
	} else {
		bpf_probe_read_kernel(d->daddr, 4, head + nh + 12);
	}
}

/*
 * One packet dropped at listener sk, which accounts for advance of its
 * sk_drops: the poll must not count that part again.
 */
static __always_inline void report_packet(const struct sock *sk, const struct sk_buff *skb, __u8 kind, __u32 reason,
					  __u32 advance)
{
	__u64 skaddr = (__u64)sk;
	struct listen_count *lc = bpf_map_lookup_elem(&listen_drops, &skaddr);
	if (lc)
		__sync_fetch_and_add(&lc->seen, advance);
	else
		watch_listener(sk); /* its counter already includes this drop */

	struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
	struct drop d = {};
	if (!fill_listener(&d, sk, si ? &si->owner : NULL))
		return;
	d.ts_ns = bpf_ktime_get_ns();
	d.kind = kind;
	d.count = 1;
	d.reason = reason;
	read_client(&d, skb);
	if (drop_wanted(&d))
		output_record(&d, sizeof(d));
}

/*
 * A packet dropped at a listener whose accept queue was full when the
 * handshake's final ACK came (SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, 6.15+).
 * The packet tells who was dropped.
 */
static __always_inline int handle_kfree(struct sk_buff *skb, __u32 reason, const struct sock *sk)
{
	if (!cfg.reason_listen_overflow || reason != cfg.reason_listen_overflow || !sk || !is_tcp(sk, false))
		return 0;
	/*
	 * This drop bumped sk_drops twice: tcp_listendrop() (which ListenDrops
	 * counts too) and the sk_drops_add() of tcp_v4/v6_rcv's discard path
	 * (measured on 6.18; every kernel with this reason shares the path).
	 * Reported here as one drop, it must not be counted again by the poll.
	 */
	report_packet(sk, skb, DROP_PACKET, reason, 2);
	return 0;
}

/* The listener is rx_sk (6.11+; TCP_LISTEN_OVERFLOW itself came in 6.15). */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_rx_sk, struct sk_buff *skb, void *location, int reason, struct sock *rx_sk)
{
	return handle_kfree(skb, reason, rx_sk);
}

/*
 * The ends of a TCP segment as if it came in: local its destination, remote
 * its source. Returns the family, 0 when skb holds no parsed TCP segment.
 */
static __always_inline __u16 packet_ends(const struct sk_buff *skb, __u8 *local, __u8 *remote, __u16 *lport,
					 __u16 *rport)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	if (th == (__u16)~0U || nh == (__u16)~0U) /* not parsed down to TCP */
		return 0;
	__u8 l4 = 0;
	__u16 family = 0;
	__be16 proto = BPF_CORE_READ(skb, protocol);
	if (proto == bpf_htons(ETH_P_IP)) {
		bpf_probe_read_kernel(&l4, 1, head + nh + 9);
		family = AF_INET;
		bpf_probe_read_kernel(remote, 4, head + nh + 12);
		bpf_probe_read_kernel(local, 4, head + nh + 16);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		bpf_probe_read_kernel(&l4, 1, head + nh + 6);
		family = AF_INET6;
		bpf_probe_read_kernel(remote, 16, head + nh + 8);
		bpf_probe_read_kernel(local, 16, head + nh + 24);
	}
	if (l4 != IPPROTO_TCP)
		return 0;
	__be16 ports[2] = {};
	bpf_probe_read_kernel(ports, sizeof(ports), head + th);
	*rport = bpf_ntohs(ports[0]);
	*lport = bpf_ntohs(ports[1]);
	return family;
}

/*
 * Other TCP drops (what tcpdrop shows): a TCP packet the kernel freed as
 * dropped, named by the kernel's reason where it gives one. sk is the socket
 * it belonged to, if known. The ends come from the packet: an incoming one's
 * destination is local; one the socket sent has its source there.
 */
static __always_inline int handle_other_drop(const struct sk_buff *skb, __u32 reason, const struct sock *sk)
{
	/* A listener's drops are the listener features' (and counted there). */
	if (reason && reason == cfg.reason_listen_overflow)
		return 0;
	if (sk && BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN)
		return 0;
	struct drop d = {};
	d.family = packet_ends(skb, d.saddr, d.daddr, &d.lport, &d.rport);
	if (!d.family || (cfg.family && cfg.family != d.family))
		return 0;

	if (sk && is_tcp(sk, false)) {
		__u64 skaddr = (__u64)sk;
		if (d.rport == local_port(sk, false) && d.lport != d.rport) {
			/* Outgoing: swap the ends. */
			__u8 a[16];
			__builtin_memcpy(a, d.saddr, 16);
			__builtin_memcpy(d.saddr, d.daddr, 16);
			__builtin_memcpy(d.daddr, a, 16);
			__u16 p = d.lport;
			d.lport = d.rport;
			d.rport = p;
		}
		d.skaddr = skaddr;
		d.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
		struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
		if (si)
			d.owner = si->owner;
	} else {
		d.netns = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	}
	d.type = RECORD_DROP;
	d.ts_ns = bpf_ktime_get_ns();
	d.kind = DROP_OTHER;
	d.count = 1;
	d.reason = reason;
	if (drop_wanted(&d))
		output_record(&d, sizeof(d));
	return 0;
}

/*
 * kfree_skb without a reason (NOT_SPECIFIED) is left out: in TCP it is mostly
 * the second half of a listen drop reported already (the discarded final ACK
 * before 6.15) or a socket's teardown, and kfree_skb_reason() marks the drops
 * TCP names. So is QUEUE_PURGE: what a socket being destroyed still has
 * queued, which kernels before the reason freed as NOT_SPECIFIED (6.18: most
 * graceful closes, the FIN that came with the last ACK). No packet is lost.
 */
static __always_inline int handle_kfree_other(const struct sk_buff *skb, __u32 reason, const struct sock *sk)
{
	if (reason == cfg.reason_not_specified || (cfg.reason_queue_purge && reason == cfg.reason_queue_purge))
		return 0;
	return handle_other_drop(skb, reason, sk);
}

/* 6.11+: rx_sk names the socket of an incoming packet that skb->sk does not. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(other_rx_sk, struct sk_buff *skb, void *location, int reason, struct sock *rx_sk)
{
	return handle_kfree_other(skb, reason, rx_sk ? rx_sk : BPF_CORE_READ(skb, sk));
}

/* 5.17+: the reason, no rx_sk. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(other_reason, struct sk_buff *skb, void *location, int reason)
{
	return handle_kfree_other(skb, reason, BPF_CORE_READ(skb, sk));
}

/* Up to 5.18, TCP's input path dropped through tcp_drop(sk, skb): no reason. */
SEC("fentry/tcp_drop")
int BPF_PROG(tcp_drop_fentry, struct sock *sk, struct sk_buff *skb)
{
	return handle_other_drop(skb, 0, sk);
}

SEC("kprobe/tcp_drop")
int BPF_KPROBE(tcp_drop_kprobe, struct sock *sk, struct sk_buff *skb)
{
	return handle_other_drop(skb, 0, sk);
}

/*
 * A reset this host sent (tcp:tcp_send_reset). skb is the segment that drew
 * it, NULL for an abort (the application closed with data unread, or with
 * SO_LINGER 0; a keepalive or memory abort): its ends, reversed, are the
 * reset's. sk is the socket that sent it: a full socket, a listener, a
 * timewait socket, or NULL when no socket took the segment (a closed port).
 * Kernels that pass a reason (6.10+) fire for all of those; earlier ones
 * only for full sockets. The owner: the socket table's, or for a listener
 * the listener table's; none for the rest.
 */
static __always_inline int handle_reset(const struct sock *sk, const struct sk_buff *skb, __u32 reason)
{
	struct event e = {};
	__u8 state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
	if (skb) {
		e.family = packet_ends(skb, e.saddr, e.daddr, &e.lport, &e.rport);
		e.netns = sk ? netns_of(sk, false) : BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);
	} else if (sk) {
		e.family = read_addrs(sk, e.saddr, e.daddr, false);
		e.lport = local_port(sk, false);
		e.rport = remote_port(sk, false);
		e.netns = netns_of(sk, false);
	}
	if (!e.family || (cfg.family && cfg.family != e.family) || !port_wanted(&e))
		return 0;

	/* A timewait or request socket has no owner to find, now or later:
	 * such a reset names no socket. */
	if (state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV)
		sk = NULL;
	__u64 skaddr = (__u64)sk;
	const struct owner *o = NULL;
	if (state == TCP_LISTEN) {
		struct listen_key lk = { .netns = e.netns, .port = e.lport };
		o = bpf_map_lookup_elem(&listeners, &lk);
	} else if (sk) {
		/* An abort resets a socket already closed (tcp_set_state came
		 * first): then its closed entry is its own. Otherwise a closed
		 * entry is an earlier socket's at this address. */
		struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
		if (si && (si->state != TCP_CLOSE || state == TCP_CLOSE))
			o = &si->owner;
	}
	owned_out(&e, o, RECORD_RESET, skaddr, state, reason);
	return 0;
}

/* The loader picks the variant whose arguments match the kernel's tracepoint
 * (its BTF says), and attaches it only for --events resets. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(reset_btf, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset(sk, skb, RESET_REASON_NONE);
}

SEC("tp_btf/tcp_send_reset")
int BPF_PROG(reset_btf_reason, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	return handle_reset(sk, skb, reason);
}

SEC("raw_tp/tcp_send_reset")
int BPF_PROG(reset_raw, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset(sk, skb, RESET_REASON_NONE);
}

SEC("raw_tp/tcp_send_reset")
int BPF_PROG(reset_raw_reason, const struct sock *sk, const struct sk_buff *skb, int reason)
{
	return handle_reset(sk, skb, reason);
}

/*
 * Before tcp_send_reset became an event of its own (6.10, with the reason),
 * tcp_v4/v6_send_reset fired it only for a full socket. The other resets
 * those functions send (for a segment no socket took, as to a closed port,
 * or one a timewait or request socket answers) are watched at the functions
 * themselves where the kernel can hook them: fentry, else kprobe. They
 * return sending nothing in reply to a reset, and, with no socket, for a
 * segment not addressed to this host (nor when a TCP-MD5 signature fails to
 * match: not told apart here).
 */
#define RTN_LOCAL 2
#define RTF_LOCAL 0x80000000

static __always_inline bool for_this_host(const struct sk_buff *skb)
{
	unsigned long dst = BPF_CORE_READ(skb, _skb_refdst) & ~1UL;
	if (BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IP))
		return BPF_CORE_READ((struct rtable *)dst, rt_type) == RTN_LOCAL;
	return BPF_CORE_READ((struct rt6_info *)dst, rt6i_flags) & RTF_LOCAL;
}

static __always_inline int handle_reset_call(const struct sock *sk, const struct sk_buff *skb)
{
	if (sk) {
		__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (state != TCP_TIME_WAIT && state != TCP_NEW_SYN_RECV)
			return 0; /* a full socket's: the tracepoint has it */
	}
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 flags = 0;
	bpf_probe_read_kernel(&flags, 1, head + th + 13);
	if (flags & 0x04 /* RST */ || (!sk && !for_this_host(skb)))
		return 0;
	return handle_reset(sk, skb, RESET_REASON_NONE);
}

/* Attached to tcp_v4_send_reset, and a copy to tcp_v6_send_reset. */
SEC("fentry/tcp_v4_send_reset")
int BPF_PROG(reset_call_fentry, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset_call(sk, skb);
}

SEC("kprobe/tcp_v4_send_reset")
int BPF_KPROBE(reset_call_kprobe, const struct sock *sk, const struct sk_buff *skb)
{
	return handle_reset_call(sk, skb);
}

/*
 * Where kprobes or fentry exist, the listen-queue checks themselves are
 * watched: tcp_conn_request() for a SYN, tcp_v4/v6_syn_recv_sock() for the
 * final ACK. Entry notes the listener's sk_drops; if the call bumped it (the
 * kernel's tcp_listendrop(), which ListenDrops counts), the exit reports the
 * packet with its client. One slot per CPU and call: these run in softirq (or
 * with it disabled), so a call does not nest in itself on a CPU; the v6 call
 * that hands an IPv4 packet to the v4 one shares the ACK slot, and the inner
 * exit disarms it.
 */
struct drop_watch {
	__u64 sk;
	__u64 skb;
	__u32 drops;   /* sk_drops at entry */
	__u16 armed;
	__u16 advance; /* how much of sk_drops a drop here stands for */
};

enum { WATCH_SYN, WATCH_ACK, WATCH_SLOTS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WATCH_SLOTS);
	__type(key, __u32);
	__type(value, struct drop_watch);
} drop_watch SEC(".maps");

static __always_inline int watch_enter(__u32 slot, const struct sock *sk, const struct sk_buff *skb, __u16 advance)
{
	struct drop_watch *w = bpf_map_lookup_elem(&drop_watch, &slot);
	if (!w)
		return 0;
	w->sk = (__u64)sk;
	w->skb = (__u64)skb;
	w->drops = BPF_CORE_READ(sk, sk_drops.counter);
	w->armed = 1;
	w->advance = advance;
	/* A full queue is where drops come from (tcp_conn_request's checks). */
	__u32 max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	if (BPF_CORE_READ(sk, sk_ack_backlog) > max ||
	    BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter) >= max) {
		__u64 skaddr = (__u64)sk;
		struct listen_count *lc = bpf_map_lookup_elem(&listen_drops, &skaddr);
		if (lc)
			lc->busy_ns = bpf_ktime_get_ns();
	}
	return 0;
}

/* failed: the call says it failed (tcp_conn_request() returns 0 either way). */
static __always_inline int watch_exit(__u32 slot, bool failed, __u8 kind)
{
	struct drop_watch *w = bpf_map_lookup_elem(&drop_watch, &slot);
	if (!w || !w->armed)
		return 0;
	w->armed = 0;
	const struct sock *sk = (const struct sock *)w->sk;
	if (!failed || (__s32)(BPF_CORE_READ(sk, sk_drops.counter) - w->drops) <= 0)
		return 0;
	report_packet(sk, (const struct sk_buff *)w->skb, kind, 0, w->advance);
	return 0;
}

SEC("fentry/tcp_conn_request")
int BPF_PROG(syn_fentry, void *rsk_ops, void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	return watch_enter(WATCH_SYN, sk, skb, 1);
}

SEC("fexit/tcp_conn_request")
int BPF_PROG(syn_fexit)
{
	return watch_exit(WATCH_SYN, true, DROP_SYN);
}

/*
 * The exit goes by sk_drops alone: where the return value sits depends on the
 * number of arguments, which grew in newer kernels (6.12 has seven).
 */

/*
 * A final ACK that fails here from tcp_check_req() (req_unhash set) bumps
 * sk_drops again on its way out (tcp_v4/v6_rcv's discard path), as the
 * TCP_LISTEN_OVERFLOW kfree does: two counts for one drop. From a syncookie
 * or Fast Open (req_unhash NULL) it is one.
 */
static __always_inline __u16 ack_advance(const void *req_unhash)
{
	return req_unhash ? 2 : 1;
}

/* The loader attaches a second copy of each to tcp_v6_syn_recv_sock. */
SEC("fentry/tcp_v4_syn_recv_sock")
int BPF_PROG(ack_fentry, struct sock *sk, struct sk_buff *skb, void *req, void *dst, void *req_unhash)
{
	return watch_enter(WATCH_ACK, sk, skb, ack_advance(req_unhash));
}

SEC("fexit/tcp_v4_syn_recv_sock")
int BPF_PROG(ack_fexit)
{
	return watch_exit(WATCH_ACK, true, DROP_ACK);
}

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(syn_kprobe, void *rsk_ops, void *af_ops, struct sock *sk, struct sk_buff *skb)
{
	return watch_enter(WATCH_SYN, sk, skb, 1);
}

SEC("kretprobe/tcp_conn_request")
int BPF_KRETPROBE(syn_kretprobe)
{
	return watch_exit(WATCH_SYN, true, DROP_SYN);
}

/* Attached to tcp_v4_syn_recv_sock and tcp_v6_syn_recv_sock. */
SEC("kprobe/tcp_v4_syn_recv_sock")
int BPF_KPROBE(ack_kprobe, struct sock *sk, struct sk_buff *skb, void *req, void *dst, void *req_unhash)
{
	return watch_enter(WATCH_ACK, sk, skb, ack_advance(req_unhash));
}

SEC("kretprobe/tcp_v4_syn_recv_sock")
int BPF_KRETPROBE(ack_kretprobe, struct sock *ret)
{
	return watch_exit(WATCH_ACK, !ret, DROP_ACK);
}

/*
 * Where neither fentry nor kprobes exist: a SYN that tcp_conn_request()
 * dropped for a full queue fires no tracepoint of its own (it counts in
 * sk_drops, and its caller frees it as consumed), but consume_skb() says
 * where it was called from (6.3+). A SYN consumed by tcp_rcv_state_process()
 * at a listener whose queue is full, while the listener's sk_drops is ahead
 * of what was reported, is that drop: it names the client. The loader sets
 * the function's code range (kallsyms); 0 matches nothing. The listener is
 * one of those at the packet's port in its route's namespace, bound to the
 * packet's address or to any; of an SO_REUSEPORT group's (one address), the
 * first whose drops are ahead, which is the one that dropped unless another
 * has drops that only the next walk will count.
 */
volatile __u64 rcv_state_lo, rcv_state_hi;

/* Where a consumed SYN was headed, read once, when a listener needs it. */
struct syn_dest {
	__u8 addr[16];
	__u16 proto; /* the packet's ETH_P_*, network order; 0: not read yet */
};

/* Whether a listener bound to a local address takes a packet headed for
 * dest: the same address, or any. An IPv6 listener takes IPv4 packets at ::
 * or at their v4-mapped address. */
static __always_inline bool listener_takes(const struct sock *sk, const struct sk_buff *skb, struct syn_dest *dest)
{
	if (!dest->proto) {
		dest->proto = skb->protocol;
		if (dest->proto == bpf_htons(ETH_P_IPV6))
			bpf_probe_read_kernel(dest->addr, 16, skb->head + skb->network_header + 24);
		else
			bpf_probe_read_kernel(dest->addr, 4, skb->head + skb->network_header + 16);
	}
	__u32 v4 = *(__u32 *)dest->addr;
	if (sk->__sk_common.skc_family == AF_INET) {
		__u32 bound = sk->__sk_common.skc_rcv_saddr;
		return dest->proto == bpf_htons(ETH_P_IP) && (!bound || bound == v4);
	}
	__u32 b[4];
	__builtin_memcpy(b, &sk->__sk_common.skc_v6_rcv_saddr, sizeof(b));
	if (!(b[0] | b[1] | b[2] | b[3]))
		return true;
	if (dest->proto == bpf_htons(ETH_P_IP))
		return !b[0] && !b[1] && b[2] == bpf_htonl(0x0000ffff) && b[3] == v4;
	__u32 *d = (__u32 *)dest->addr;
	return b[0] == d[0] && b[1] == d[1] && b[2] == d[2] && b[3] == d[3];
}

/*
 * Whether the SYN skb, consumed, was dropped at the listener at skaddr (on
 * port): a full queue there, tcp_conn_request()'s checks (a full SYN queue
 * without syncookies: sk_drops tells; or a full accept queue); drops counted
 * there beyond those reported; and the packet's local address its own.
 */
static __always_inline bool dropped_syn_at(__u64 skaddr, __u16 port, const struct sk_buff *skb,
					   struct syn_dest *dest)
{
	const struct sock *sk = bpf_rdonly_cast((void *)skaddr, bpf_core_type_id_kernel(struct sock));
	const struct inet_connection_sock *icsk =
		bpf_rdonly_cast((void *)skaddr, bpf_core_type_id_kernel(struct inet_connection_sock));
	/* A slot left by a close no program saw may hold another socket now. */
	if (sk->__sk_common.skc_state != TCP_LISTEN || sk->__sk_common.skc_num != port)
		return false;
	__u32 max = sk->sk_max_ack_backlog;
	if (sk->sk_ack_backlog <= max && icsk->icsk_accept_queue.qlen.counter < max)
		return false;
	struct listen_count *lc = bpf_map_lookup_elem(&listen_drops, &skaddr);
	if (!lc || (__s32)(sk->sk_drops.counter - lc->seen) <= 0)
		return false;
	return listener_takes(sk, skb, dest);
}

#define TCP_FLAG_BYTE_SYN 0x02
#define TCP_FLAG_BYTE_RST 0x04
#define TCP_FLAG_BYTE_ACK 0x10

SEC("tp_btf/consume_skb")
int BPF_PROG(syn_consumed, struct sk_buff *skb, void *location)
{
	__u64 at = (__u64)location;
	if (at < rcv_state_lo || at >= rcv_state_hi)
		return 0;
	/* skb is typed here: its fields are plain loads. */
	__u16 th = skb->transport_header;
	if (th == (__u16)~0U)
		return 0;
	__u8 hdr[14]; /* the TCP header up to its flags */
	if (bpf_probe_read_kernel(hdr, sizeof(hdr), skb->head + th))
		return 0;
	if ((hdr[13] & (TCP_FLAG_BYTE_SYN | TCP_FLAG_BYTE_ACK | TCP_FLAG_BYTE_RST)) != TCP_FLAG_BYTE_SYN)
		return 0;
	/* TCP has let go of skb->dev by now; the route it came in by has one. */
	unsigned long refdst = skb->_skb_refdst & ~1UL;
	if (!refdst)
		return 0;
	const struct dst_entry *dst = bpf_rdonly_cast((void *)refdst, bpf_core_type_id_kernel(struct dst_entry));
	const struct net_device *dev = dst->dev;
	if (!dev)
		return 0;
	struct listen_key lk = { .netns = dev->nd_net.net->ns.inum, .port = (__u16)hdr[2] << 8 | hdr[3] };
	struct listen_slots *ls = bpf_map_lookup_elem(&listen_socks, &lk);
	if (!ls)
		return 0;
	struct syn_dest dest = {};
#pragma unroll
	for (int i = 0; i < LISTEN_SLOTS; i++) {
		__u64 skaddr = ls->sk[i];
		if (skaddr && dropped_syn_at(skaddr, lk.port, skb, &dest)) {
			report_packet((const struct sock *)skaddr, skb, DROP_SYN, 0, 1);
			return 0;
		}
	}
	return 0;
}

/*
 * Walks the listeners being watched (in every network namespace): reports
 * the drops sk_drops counted since the last walk (SYNs dropped for a full
 * queue fire no tracepoint) and, for `tcptrace listeners`, writes one row.
 */
static __always_inline bool poll_one(__u64 skaddr, struct listen_count *lc, struct listener *l)
{
	const struct sock *sk = (const struct sock *)skaddr;
	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return false;
	struct sock_info *si = bpf_map_lookup_elem(&socks, &skaddr);
	struct owner *o = si ? &si->owner : NULL;
	__u64 now = bpf_ktime_get_ns();
	if (now - lc->busy_ns >= cfg.watch_busy_ns)
		report_counted_drops(sk, &lc->seen, o, now);
	report_flood(sk, lc, o, now);

	__u8 unused[16];
	l->family = read_addrs(sk, l->saddr, unused, false);
	if (!l->family)
		return false;
	l->skaddr = skaddr;
	l->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	l->lport = local_port(sk, false);
	l->drops = BPF_CORE_READ(sk, sk_drops.counter);
	l->backlog = BPF_CORE_READ(sk, sk_ack_backlog);
	l->max_backlog = BPF_CORE_READ(sk, sk_max_ack_backlog);
	l->syn_queue = BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter);
	l->synflood = BPF_CORE_READ((const struct inet_connection_sock *)sk, icsk_accept_queue.synflood_warned);
	if (o)
		l->owner = *o;
	return true;
}

SEC("iter/bpf_map_elem")
int poll_listeners(struct bpf_iter__bpf_map_elem *ctx)
{
	__u64 *key = ctx->key;
	struct listen_count *lc = ctx->value;
	struct listener l = {};
	if (key && lc && poll_one(*key, lc, &l))
		bpf_seq_write(ctx->meta->seq, &l, sizeof(l));
	return 0;
}

/* The rows of poll_listeners_run (see sweep_socks_run), as many as it
 * returns. Made only where that program is loaded. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LISTENERS_MAX);
	__type(key, __u32);
	__type(value, struct listener);
} listener_rows SEC(".maps");

static long poll_listeners_cb(void *map, const __u64 *key, struct listen_count *lc, __u32 *rows)
{
	struct listener l = {};
	__u32 n = *rows;
	if (poll_one(*key, lc, &l) && n < LISTENERS_MAX && bpf_map_update_elem(&listener_rows, &n, &l, BPF_ANY) == 0)
		*rows = n + 1;
	return 0;
}

SEC("raw_tp")
int poll_listeners_run(void *ctx)
{
	__u32 rows = 0;
	bpf_for_each_map_elem(&listen_drops, poll_listeners_cb, &rows, 0);
	return rows;
}
