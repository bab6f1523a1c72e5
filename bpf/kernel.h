/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel types tcptrace reads. Every struct carries
 * preserve_access_index, so field offsets are relocated against the running
 * kernel's BTF at load time (CO-RE); only the fields we read are declared.
 */
#pragma once
/* Stands in for vmlinux.h: libbpf's kprobe macros then use the kernel's pt_regs names. */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_ARRAY_OF_MAPS = 12,
	BPF_MAP_TYPE_RINGBUF = 27,
};

/* Flags of bpf_ringbuf_submit and bpf_ringbuf_query. */
enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};
enum {
	BPF_RB_AVAIL_DATA = 0,
};

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define EADDRNOTAVAIL 99
#define IPPROTO_MPTCP 262

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct netns_ipv4 {
	__u8 sysctl_tcp_syncookies;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
	struct netns_ipv4 ipv4;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	union {
		struct {
			__be32 skc_daddr;
			__be32 skc_rcv_saddr;
		};
	};
	union {
		struct {
			__be16 skc_dport;
			__u16 skc_num;
		};
	};
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} atomic_t;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	int sk_err;
	atomic_t sk_drops;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

/* A handshake under way at a listener: its addresses and ports are in its
 * sock_common, first, as in struct sock. */
struct request_sock {
	struct sock_common __req_common;
	__u8 num_retrans;
} __attribute__((preserve_access_index));

/* The SYN queue of a listener (connections whose handshake is under way).
 * synflood_warned, a u32 in older kernels and a u8 in newer ones, is read as
 * a u8: its low byte on little-endian machines, and it holds only 0 or 1. */
struct request_sock_queue {
	__u8 synflood_warned;
	atomic_t qlen;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct request_sock_queue icsk_accept_queue;
} __attribute__((preserve_access_index));

struct net_device {
	possible_net_t nd_net;
} __attribute__((preserve_access_index));

struct sk_buff {
	struct net_device *dev;
	struct sock *sk;
	unsigned char *head;
	__u16 transport_header;
	__u16 network_header;
	__be16 protocol;
	unsigned long _skb_refdst; /* the route it took in, its low bit a flag */
} __attribute__((preserve_access_index));

/* An incoming segment's route: its device (the namespace it came into, where
 * skb->dev is gone) and whether it was addressed to this host. */
struct dst_entry {
	struct net_device *dev;
} __attribute__((preserve_access_index));

struct rtable {
	__u16 rt_type;
} __attribute__((preserve_access_index));

struct rt6_info {
	__u32 rt6i_flags;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_map_elem {
	struct bpf_iter_meta *meta;
	void *key;
	void *value;
} __attribute__((preserve_access_index));

/* tcp_mstamp: the socket's last send or receive, in microseconds of the
 * CLOCK_MONOTONIC clock that bpf_ktime_get_ns() reads. */
struct tcp_sock {
	__u64 tcp_mstamp;
	__u32 total_retrans;
} __attribute__((preserve_access_index));

/* inet_sport outlives skc_num, which inet_put_port() clears before the CLOSE event. */
struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
} __attribute__((preserve_access_index));

/* An MPTCP socket (Go 1.24+ listens with MPTCP by default): the descriptor
 * points at it, TCP state changes happen on its subflows. */
struct mptcp_sock {
	struct sock *first;
} __attribute__((preserve_access_index));

struct trace_entry {
	unsigned short type;
} __attribute__((preserve_access_index));

/* Context of the classic tracepoint sock:inet_sock_set_state. */
struct trace_event_raw_inet_sock_set_state {
	struct trace_entry ent;
	const void *skaddr;
	int oldstate;
	int newstate;
	__u16 protocol;
} __attribute__((preserve_access_index));

/* Record of a syscalls:sys_exit_* event (struct syscall_trace_exit): its
 * layout is the events' format files', unchanged since they exist. */
struct syscall_exit_record {
	__u64 common;
	int nr;
	long ret;
};

typedef unsigned short umode_t;
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define PF_KTHREAD 0x00200000

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} kuid_t;

struct cred {
	kuid_t uid;
} __attribute__((preserve_access_index));

struct inode {
	umode_t i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int flags;
	int pid;
	int tgid;
	__u64 start_time;
	const struct cred *cred;
	char comm[16];
	struct files_struct *files;
	struct css_set *cgroups;
	struct task_struct *group_leader;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

/* Registers at syscall exit: only the syscall number is read. */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	/* Arguments and return value, for kprobes (BPF_KPROBE, BPF_KRETPROBE). */
	unsigned long di, si, dx, cx, r8, r9, ax;
	long orig_ax;
} __attribute__((preserve_access_index));
#define SYSCALL_NR_FIELD orig_ax
#define NR_connect 42
#define NR_accept 43
#define NR_accept4 288
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs {
	int syscallno;
} __attribute__((preserve_access_index));
/* Arguments and return value, for kprobes (libbpf reads them through this). */
struct user_pt_regs {
	__u64 regs[31];
} __attribute__((preserve_access_index));
#define SYSCALL_NR_FIELD syscallno
#define NR_connect 203
#define NR_accept 202
#define NR_accept4 242
#else
#error "tcptrace: unsupported target architecture"
#endif
