// Package tcpstate names the kernel's TCP states (include/net/tcp_states.h).
// The numbers are part of the kernel's ABI (they appear in /proc/net/tcp and
// sock_diag), so a table here is safe across kernels.
package tcpstate

import (
	"fmt"
	"strings"
)

// State is a TCP state number as the kernel stores it in sk_state.
type State uint8

const (
	Established   State = 1
	SynSent       State = 2
	SynRecv       State = 3
	FinWait1      State = 4
	FinWait2      State = 5
	TimeWait      State = 6
	Close         State = 7
	CloseWait     State = 8
	LastAck       State = 9
	Listen        State = 10
	Closing       State = 11
	NewSynRecv    State = 12
	BoundInactive State = 13
)

var names = [...]string{
	Established:   "ESTABLISHED",
	SynSent:       "SYN_SENT",
	SynRecv:       "SYN_RECV",
	FinWait1:      "FIN_WAIT1",
	FinWait2:      "FIN_WAIT2",
	TimeWait:      "TIME_WAIT",
	Close:         "CLOSE",
	CloseWait:     "CLOSE_WAIT",
	LastAck:       "LAST_ACK",
	Listen:        "LISTEN",
	Closing:       "CLOSING",
	NewSynRecv:    "NEW_SYN_RECV",
	BoundInactive: "BOUND_INACTIVE",
}

// String returns the kernel's name without the TCP_ prefix, or UNKNOWN(n).
func (s State) String() string {
	if int(s) < len(names) && names[s] != "" {
		return names[s]
	}
	return fmt.Sprintf("UNKNOWN(%d)", uint8(s))
}

// Parse accepts a state name in any case, with or without the TCP_ prefix.
func Parse(name string) (State, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "TCP_")
	for i, s := range names {
		if s != "" && s == n {
			return State(i), nil
		}
	}
	return 0, fmt.Errorf("unknown TCP state %q (want one of %s)", name, strings.Join(Names(), ", "))
}

// Names lists every state name in kernel order.
func Names() []string {
	out := make([]string, 0, len(names))
	for _, s := range names {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
