// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tcptrace kernel side: every TCP state change goes into one ring buffer.
 *
 * Three programs watch sock:inet_sock_set_state (tp_btf, raw_tp, classic
 * tracepoint); the loader keeps the best one the kernel accepts and prunes
 * the others. They share handle_state().
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "tcptrace.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_SENT = 2,
	TCP_CLOSE = 7,
};

volatile const struct config cfg = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* resized by the loader */
} events SEC(".maps");

/* Ring-buffer records that found no room; read and reported by Go. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* When each socket entered its current state. LRU bounds it if a CLOSE is missed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, __u64);
} state_since SEC(".maps");

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
 * connect() moves a socket to SYN_SENT before it picks the local port, so that
 * event is held here until the port is known: at connect()'s syscall exit or
 * at the socket's next state change, whichever comes first.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* skaddr */
	__type(value, struct event);
} pending_connects SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid of the connecting thread */
	__type(value, __u64); /* skaddr */
} connecting SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

/* Wake the reader only when enough data waits; otherwise it drains on a timer. */
static __always_inline void output(struct event *e)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg.wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&events, e, sizeof(*e), flags))
		count_lost();
}

static __always_inline bool port_wanted(const struct event *e)
{
	if (!cfg.filter_ports)
		return true;
	return bpf_map_lookup_elem(&filter_ports, &e->lport) ||
	       bpf_map_lookup_elem(&filter_ports, &e->rport);
}

static __always_inline __u16 local_port(const struct sock *sk)
{
	return bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
}

/* Emit a held SYN_SENT event, now that sk has its local port. */
static __always_inline void flush_pending(const struct sock *sk, __u64 skaddr)
{
	struct event *e = bpf_map_lookup_elem(&pending_connects, &skaddr);
	if (!e)
		return;
	e->lport = local_port(sk);
	if (port_wanted(e))
		output(e);
	bpf_map_delete_elem(&pending_connects, &skaddr);
}

static __always_inline bool is_v4_mapped(const __u8 *a)
{
	__u64 lo = *(const __u64 *)a;
	__u32 mid = *(const __u32 *)(a + 8);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

static __always_inline int handle_state(const struct sock *sk, int oldstate, int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;

	struct event e = {};
	e.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (e.family == AF_INET) {
		BPF_CORE_READ_INTO(&e.saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO(&e.daddr, sk, __sk_common.skc_daddr);
	} else if (e.family == AF_INET6) {
		BPF_CORE_READ_INTO(&e.saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e.daddr, sk, __sk_common.skc_v6_daddr);
		/* A dual-stack socket talking IPv4 is shown as IPv4. */
		if (is_v4_mapped(e.saddr) || is_v4_mapped(e.daddr)) {
			e.family = AF_INET;
			*(__u32 *)e.saddr = *(__u32 *)(e.saddr + 12);
			*(__u32 *)e.daddr = *(__u32 *)(e.daddr + 12);
			__builtin_memset(e.saddr + 4, 0, 12);
			__builtin_memset(e.daddr + 4, 0, 12);
		}
	} else {
		return 0;
	}
	/* A socket's family never changes: skip foreign ones before any map work. */
	if (cfg.family && cfg.family != e.family)
		return 0;

	__u64 skaddr = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();

	/* The time in the old state is kept for every socket, filtered or not. */
	__u64 *since = bpf_map_lookup_elem(&state_since, &skaddr);
	if (since) {
		e.in_state_ns = now - *since;
		e.flags |= EVENT_IN_STATE_KNOWN;
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&state_since, &skaddr);
	else
		bpf_map_update_elem(&state_since, &skaddr, &now, BPF_ANY);

	/* Keep the stream in order: a held SYN_SENT goes out before what follows it. */
	if (oldstate == TCP_SYN_SENT)
		flush_pending(sk, skaddr);

	if (cfg.state_mask && !(cfg.state_mask & (1u << (newstate & 31))))
		return 0;

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e.pid = pid_tgid >> 32;
	e.tid = (__u32)pid_tgid;
	if (cfg.filter_pids && !bpf_map_lookup_elem(&filter_pids, &e.pid))
		return 0;

	e.type = RECORD_STATE;
	e.ts_ns = now;
	e.skaddr = skaddr;
	e.oldstate = oldstate;
	e.newstate = newstate;
	e.uid = (__u32)bpf_get_current_uid_gid();
	e.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	e.lport = local_port(sk);
	e.rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	bpf_get_current_comm(&e.comm, sizeof(e.comm));

	if (oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT && e.lport == 0) {
		e.flags |= EVENT_PORT_LATE;
		if (!bpf_map_update_elem(&pending_connects, &skaddr, &e, BPF_ANY)) {
			bpf_map_update_elem(&connecting, &pid_tgid, &skaddr, BPF_ANY);
			return 0;
		}
		/* No room to hold it: send it now, port unknown, rather than lose it. */
	}
	if (!port_wanted(&e))
		return 0;
	output(&e);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_btf, const struct sock *sk, const int oldstate, const int newstate)
{
	return handle_state(sk, oldstate, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw, const struct sock *sk, const int oldstate, const int newstate)
{
	return handle_state(sk, oldstate, newstate);
}

SEC("tracepoint/sock/inet_sock_set_state")
int state_tp(struct trace_event_raw_inet_sock_set_state *args)
{
	return handle_state((const struct sock *)args->skaddr, args->oldstate, args->newstate);
}

/* connect() has picked the local port by the time it returns. */
static __always_inline int handle_sys_exit(struct pt_regs *regs)
{
	if (SYSCALL_NR(regs) != NR_connect)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 *skaddr = bpf_map_lookup_elem(&connecting, &pid_tgid);
	if (!skaddr)
		return 0;
	__u64 key = *skaddr;
	bpf_map_delete_elem(&connecting, &pid_tgid);
	flush_pending((const struct sock *)key, key);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(connect_btf, struct pt_regs *regs, long ret)
{
	return handle_sys_exit(regs);
}

SEC("raw_tp/sys_exit")
int BPF_PROG(connect_raw, struct pt_regs *regs, long ret)
{
	return handle_sys_exit(regs);
}
