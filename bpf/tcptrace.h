/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Records and configuration shared with Go; bpf2go generates the Go types. */
#pragma once

enum record_type {
	RECORD_STATE = 1,
	RECORD_DROP = 2,
	/* A segment the kernel retransmitted (struct event: oldstate is the
	 * socket's state, retrans its count so far, this one included). */
	RECORD_RETRANS = 3,
	/* A reset this host sent (struct event: oldstate is the sending
	 * socket's state, 0 without a socket; reason says why). */
	RECORD_RESET = 4,
};

/* struct event's reason when the kernel gives none (before 6.10). */
#define RESET_REASON_NONE 0xffffffff

enum drop_kind {
	/* One dropped packet, seen by kfree_skb: reason and client known. */
	DROP_PACKET = 1,
	/* The listener's drop counter (sk_drops) grew by count. */
	DROP_COUNTED = 2,
	/* One SYN tcp_conn_request() dropped: client known, reason from the queues. */
	DROP_SYN = 3,
	/* One handshake's final ACK the listener could not take (syn_recv_sock failed). */
	DROP_ACK = 4,
	/* Any other TCP packet the kernel dropped (kfree_skb with a reason, or
	 * tcp_drop()): local and remote ends from the packet, the socket's owner
	 * when the socket is known; skaddr 0 when not. */
	DROP_OTHER = 5,
	/* Not a drop: the kernel flagged the listener's SYN queue as flooded
	 * (icsk_accept_queue.synflood_warned, set with its "Possible SYN
	 * flooding" warning, once per listener); count 0, syncookies says
	 * whether cookies answer the SYNs or they are dropped, reason is 1 if
	 * the flag was set before tcptrace first saw the listener. */
	DROP_SYN_FLOOD = 6,
};

enum event_flag {
	/* in_state_ns holds the time spent in the old state. */
	EVENT_IN_STATE_KNOWN = 1 << 0,
	/* The local port was not assigned yet when the state changed. */
	EVENT_PORT_LATE = 1 << 1,
	/* No owner is recorded for this socket (it predates tcptrace, say). */
	EVENT_OWNER_UNKNOWN = 1 << 2,
	/* The owner forked since it was recorded: the socket may have moved. */
	EVENT_OWNER_UNVERIFIED = 1 << 3,
	/* The owner has exited since it was recorded; the socket lingers. */
	EVENT_OWNER_EXITED = 1 << 4,
	/* A change into CLOSE that handed the connection to a timewait socket
	 * (see closed_into_time_wait). */
	EVENT_TIME_WAIT = 1 << 5,
};

/* The process that owns a socket. */
struct owner {
	__u64 since;  /* when recorded or last verified (CLOCK_MONOTONIC) */
	__u64 cgroup; /* cgroup v2 id (the cgroup directory's inode number) */
	__u32 pid;    /* tgid; 0 when unknown */
	__u32 uid;
	__u8 comm[16];
};

/* What the kernel side keeps per socket, keyed by its address. */
struct sock_info {
	__u64 state_ts; /* when it entered its current state; 0 when unknown */
	struct owner owner;
	__u8 state;     /* its current state as last recorded; 0 when unknown */
	__u8 held;      /* an event of it may wait in pending_connects */
	__u8 traced;    /* it passed the pid and port filters at its last change */
	__u8 pad[5];
};

/* One TCP socket file descriptor found by the scan iterator. */
struct sock_fd {
	__u64 sk;
	__u64 start_time; /* the holder's start: the most recent holder is primary */
	__u64 last_active; /* the socket's last send or receive (CLOCK_MONOTONIC ns) */
	struct owner owner;
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 state;
	__u8 pad;
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 netns;
	__u32 pad2;
};

/* One state change of a TCP socket. Field order keeps it free of holes. */
struct event {
	__u64 ts_ns;       /* CLOCK_MONOTONIC */
	__u64 skaddr;      /* the struct sock, as a key */
	__u64 in_state_ns; /* time spent in oldstate, see EVENT_IN_STATE_KNOWN */
	enum record_type type;
	__u16 flags;       /* a bit set of enum event_flag */
	__u16 error;       /* at a change into CLOSE: the socket's error (sk_err: ECONNRESET, ETIMEDOUT, ...), 0 for none */
	__u32 netns;       /* network namespace inode number */
	__u16 family;      /* AF_INET or AF_INET6; v4-mapped IPv6 comes as AF_INET */
	__u16 lport;       /* host byte order */
	__u16 rport;       /* host byte order */
	__u8 oldstate;
	__u8 newstate;
	union {
		__u32 retrans; /* at a change into CLOSE: segments the connection retransmitted (tcp_sock total_retrans) */
		__u32 reason;  /* RECORD_RESET: the kernel's enum sk_rst_reason, or RESET_REASON_NONE */
	};
	__u8 saddr[16];    /* network byte order; IPv4 in the first 4 bytes */
	__u8 daddr[16];
	struct owner owner;
};

/* Drops at a listener. type sits where struct event has it. */
struct drop {
	__u64 ts_ns;     /* CLOCK_MONOTONIC */
	__u64 skaddr;    /* the listener (DROP_OTHER: the socket, 0 if unknown) */
	__u32 count;     /* drops this record stands for */
	__u32 reason;    /* enum skb_drop_reason of the running kernel (DROP_PACKET, DROP_OTHER); see DROP_SYN_FLOOD */
	enum record_type type;
	__u32 netns;
	__u32 backlog;   /* accept queue length */
	__u32 max_backlog;
	__u32 syn_queue; /* handshakes under way */
	__u16 family;
	__u16 lport;
	__u16 rport;     /* the client's, for per-packet kinds */
	__u8 kind;       /* enum drop_kind */
	__u8 syncookies; /* net.ipv4.tcp_syncookies of the listener's namespace */
	__u8 pad[4];
	__u8 saddr[16];  /* the listener's address */
	__u8 daddr[16];  /* the client's, for per-packet kinds (IPv4 to a dual-stack listener: v4-mapped) */
	struct owner owner;
};

/* One listening socket, as `tcptrace listeners` shows it. */
struct listener {
	__u64 skaddr;
	__u32 netns;
	__u32 drops;     /* sk_drops: every drop since listen() */
	__u32 backlog;
	__u32 max_backlog;
	__u32 syn_queue;
	__u16 family;
	__u16 lport;
	__u8 saddr[16];
	struct owner owner;
	/* The kernel's "Possible SYN flooding" flag: the SYN queue overflowed
	 * since listen() (cookies sent, or SYNs dropped without them). */
	__u8 synflood;
	__u8 pad[7];
};

/* Set by the loader before load (volatile const: the verifier prunes dead filters). */
struct config {
	__u32 state_mask;   /* bit n: report changes into state n */
	__u32 old_state_mask; /* bit n: report changes out of state n; both 0 report all */
	__u32 wakeup_bytes; /* wake the reader only once this much data waits */
	__u16 family;       /* 0 for both, else AF_INET or AF_INET6 */
	__u8 filter_pids;   /* consult the filter_pids map */
	__u8 filter_ports;  /* consult the filter_ports map (local or remote port) */
	__u8 emit_states;   /* send state changes (--events states) */
	__u8 emit_drops;    /* send drops (--events drops) */
	__u32 reason_listen_overflow; /* SKB_DROP_REASON_TCP_LISTEN_OVERFLOW here, 0 if none */
	__u32 reason_not_specified;   /* SKB_DROP_REASON_NOT_SPECIFIED here */
	__u32 reason_queue_purge;     /* SKB_DROP_REASON_QUEUE_PURGE here, 0 if none */
	__u8 test_unseen_state; /* tests: act as if no program ran for changes into this state */
	__u8 errors_only;       /* report only changes into CLOSE with an error (--errors) */
	__u8 cpu_rings;         /* write to this CPU's ring in cpu_events, not to events */
	__u8 pad;
	__u64 watch_busy_ns; /* how long the listener walk leaves a listener with a queue check under way */
};
