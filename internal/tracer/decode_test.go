package tracer

import (
	"errors"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

func rawOf(r *tcptraceEvent) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(r)), rawEventSize)
}

func v4Sample() *tcptraceEvent {
	r := &tcptraceEvent{
		TsNs: 1000, Skaddr: 0xffff1, InStateNs: 2500000, Type: tcptraceRecordTypeRECORD_STATE,
		Flags: uint16(tcptraceEventFlagEVENT_IN_STATE_KNOWN), Netns: 4026531840,
		Family: afInet, Lport: 8080, Rport: 51234, Oldstate: 1, Newstate: 8,
		Owner: tcptraceOwner{Pid: 42, Uid: 7, Cgroup: 99},
	}
	copy(r.Saddr[:], []byte{127, 0, 0, 1})
	copy(r.Daddr[:], []byte{10, 0, 0, 9})
	copy(r.Owner.Comm[:], "redis-server")
	return r
}

func TestDecodeIPv4(t *testing.T) {
	var ev event.Event
	if err := decode(rawOf(v4Sample()), 5000, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != event.KindState || ev.Time != 6000 || ev.Mono != 1000 || ev.PID != 42 || ev.UID != 7 ||
		ev.Cgroup != 99 || ev.NetNS != 4026531840 || ev.Sock != 0xffff1 || ev.OwnerExited || ev.OwnerUnverified {
		t.Fatalf("ids: %+v", ev)
	}
	if ev.Family != event.IPv4 || ev.LAddr.String() != "127.0.0.1" || ev.RAddr.String() != "10.0.0.9" ||
		ev.LPort != 8080 || ev.RPort != 51234 {
		t.Fatalf("addresses: %+v", ev)
	}
	if ev.OldState != tcpstate.Established || ev.NewState != tcpstate.CloseWait {
		t.Fatalf("states: %v -> %v", ev.OldState, ev.NewState)
	}
	if !ev.InStateKnown || ev.InState != 2500*time.Microsecond {
		t.Fatalf("in state: %v %v", ev.InStateKnown, ev.InState)
	}
	if string(ev.CommBytes()) != "redis-server" {
		t.Fatalf("comm %q", ev.CommBytes())
	}
}

func TestDecodeIPv6AndUnknownInState(t *testing.T) {
	r := v4Sample()
	r.Family = afInet6
	r.Flags = 0
	r.Saddr = [16]byte{15: 1}
	r.Daddr = [16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 7}
	var ev event.Event
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Family != event.IPv6 || ev.LAddr.String() != "::1" || ev.RAddr.String() != "2001:db8::7" {
		t.Fatalf("got %+v", ev)
	}
	if ev.InStateKnown {
		t.Fatal("in-state time should be unknown without the flag")
	}
}

func TestDecodeOwnerFlags(t *testing.T) {
	var ev event.Event
	r := v4Sample()
	r.Flags |= uint16(tcptraceEventFlagEVENT_OWNER_EXITED | tcptraceEventFlagEVENT_OWNER_UNVERIFIED)
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if !ev.OwnerExited || !ev.OwnerUnverified || !ev.OwnerKnown() {
		t.Fatalf("flags: %+v", ev)
	}
	r = v4Sample()
	r.Flags |= uint16(tcptraceEventFlagEVENT_OWNER_UNKNOWN)
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.OwnerKnown() || ev.PID != 0 || len(ev.CommBytes()) != 0 {
		t.Fatalf("an unknown owner must not leak the record's owner fields: %+v", ev)
	}
}

func TestDecodeTimeWait(t *testing.T) {
	var ev event.Event
	r := v4Sample()
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.TimeWait {
		t.Fatal("time wait without its flag")
	}
	r.Flags |= uint16(tcptraceEventFlagEVENT_TIME_WAIT)
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if !ev.TimeWait || ev.Into() != tcpstate.TimeWait {
		t.Fatalf("time wait flag: %+v", ev)
	}
}

func TestDecodeError(t *testing.T) {
	var ev event.Event
	r := v4Sample()
	r.Newstate, r.Error, r.Retrans = uint8(tcpstate.Close), uint16(syscall.ETIMEDOUT), 70000
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Error != syscall.ETIMEDOUT || ev.Retrans != 70000 {
		t.Fatalf("error %v, retrans %d, want ETIMEDOUT, 70000", ev.Error, ev.Retrans)
	}
}

func TestDecodeRetrans(t *testing.T) {
	var ev event.Event
	r := v4Sample()
	r.Type = tcptraceRecordTypeRECORD_RETRANS
	r.Oldstate, r.Newstate, r.Retrans = uint8(tcpstate.Established), 0, 3
	r.Flags = uint16(tcptraceEventFlagEVENT_OWNER_UNKNOWN)
	if err := decode(rawOf(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != event.KindRetrans || ev.OldState != tcpstate.Established || ev.Retrans != 3 || ev.OwnerKnown() ||
		ev.LPort != r.Lport || ev.RPort != r.Rport {
		t.Fatalf("decoded %+v", ev)
	}
}

func TestDecodeReset(t *testing.T) {
	reasons := &kernelReasons{resets: map[uint32]string{1: "no_socket", 11: "tcp_abort_on_close"}}
	for _, c := range []struct {
		state  tcpstate.State
		reason uint32
		want   string
	}{
		{tcpstate.Close, 11, "tcp_abort_on_close"},
		{0, 1, "no_socket"},
		{tcpstate.Established, resetReasonNone, ""}, // a kernel that gives none
		{tcpstate.Established, 77, "unknown"},
	} {
		var ev event.Event
		r := v4Sample()
		r.Type = tcptraceRecordTypeRECORD_RESET
		r.Oldstate, r.Newstate, r.Retrans = uint8(c.state), 0, c.reason
		if err := decode(rawOf(r), 0, reasons, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Kind != event.KindReset || ev.OldState != c.state || ev.ResetReason != c.want || ev.Retrans != 0 ||
			ev.LPort != r.Lport || ev.RPort != r.Rport {
			t.Errorf("reason %d: decoded %+v, want reason %q", c.reason, ev, c.want)
		}
	}
}

func TestDecodeRejectsShortAndUnknown(t *testing.T) {
	var ev event.Event
	if err := decode(rawOf(v4Sample())[:rawEventSize-1], 0, testReasons, &ev); !errors.Is(err, errShortSample) {
		t.Fatalf("short sample: %v", err)
	}
	r := v4Sample()
	r.Type = 99
	if err := decode(rawOf(r), 0, testReasons, &ev); err == nil {
		t.Fatal("unknown type accepted")
	}
	r = v4Sample()
	r.Family = 1
	if err := decode(rawOf(r), 0, testReasons, &ev); err == nil {
		t.Fatal("unknown family accepted")
	}
}

func BenchmarkDecode(b *testing.B) {
	raw := rawOf(v4Sample())
	var ev event.Event
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := decode(raw, 0, testReasons, &ev); err != nil {
			b.Fatal(err)
		}
	}
}

var testReasons = &kernelReasons{names: map[uint32]string{2: "not_specified", 40: "tcp_listen_overflow"}, listenOverflow: 40}

func dropRaw(r *tcptraceDrop) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(r)), rawDropSize)
}

func TestDecodeDrops(t *testing.T) {
	r := &tcptraceDrop{TsNs: 10, Skaddr: 0xabc, Count: 1, Reason: 40, Type: tcptraceRecordTypeRECORD_DROP,
		Netns: 7, Backlog: 2, MaxBacklog: 1, Family: afInet, Lport: 3000, Rport: 51234,
		Kind: uint8(tcptraceDropKindDROP_PACKET), Owner: tcptraceOwner{Pid: 4242}}
	copy(r.Saddr[:], []byte{10, 0, 0, 5})
	copy(r.Daddr[:], []byte{10, 0, 0, 9})
	var ev event.Event
	if err := decode(dropRaw(r), 0, testReasons, &ev); err != nil {
		t.Fatal(err)
	}
	d := ev.Drop
	if ev.Kind != event.KindDrop || d.Reason != "accept_queue_full" || d.KernelReason != "tcp_listen_overflow" ||
		d.Count != 1 || !d.ClientKnown || ev.PID != 4242 || ev.LPort != 3000 || ev.RAddr.String() != "10.0.0.9" ||
		d.Backlog != 2 || d.MaxBacklog != 1 {
		t.Fatalf("packet drop: %+v", ev)
	}
	// A counted drop is named by the listener's queues.
	for _, tc := range []struct {
		backlog, max, synq uint32
		cookies            uint8
		want               string
	}{
		{2, 1, 0, 1, "accept_queue_full"},
		{0, 4, 4, 0, "syn_queue_full"},
		{5, 4, 5, 0, "syn_queue_full"},    // the kernel checks the SYN queue first
		{5, 4, 5, 1, "accept_queue_full"}, // with syncookies a full SYN queue drops nothing
		{0, 4, 1, 0, "listen_drop"},
	} {
		r = &tcptraceDrop{Type: tcptraceRecordTypeRECORD_DROP, Count: 5, Family: afInet, Kind: uint8(tcptraceDropKindDROP_COUNTED),
			Backlog: tc.backlog, MaxBacklog: tc.max, SynQueue: tc.synq, Syncookies: tc.cookies}
		if err := decode(dropRaw(r), 0, testReasons, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Drop.Reason != tc.want || ev.Drop.ClientKnown || ev.Drop.Count != 5 {
			t.Errorf("queues %d/%d syn %d: %+v, want %s", tc.backlog, tc.max, tc.synq, ev.Drop, tc.want)
		}
	}
	// An unknown kernel reason number still gets a name, never a guess.
	r = &tcptraceDrop{Type: tcptraceRecordTypeRECORD_DROP, Count: 1, Reason: 99, Family: afInet, Kind: uint8(tcptraceDropKindDROP_PACKET)}
	if err := decode(dropRaw(r), 0, testReasons, &ev); err != nil || ev.Drop.Reason != "unknown" {
		t.Fatalf("unknown reason: %v %+v", err, ev.Drop)
	}
}

// Drops seen at the listen-queue checks (fentry/kprobe): a SYN named by the
// queues, a final ACK by the accept queue; an IPv4 client of a dual-stack
// listener comes out as IPv4.
func TestDecodeSeenDrops(t *testing.T) {
	mapped := [16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 0, 14: 0, 15: 9}
	for _, tc := range []struct {
		kind               tcptraceDropKind
		backlog, max, synq uint32
		syncookies         uint8
		want               string
	}{
		{tcptraceDropKindDROP_SYN, 0, 4, 4, 0, "syn_queue_full"},
		{tcptraceDropKindDROP_SYN, 5, 4, 4, 1, "accept_queue_full"},
		{tcptraceDropKindDROP_ACK, 5, 4, 0, 1, "accept_queue_full"},
		{tcptraceDropKindDROP_ACK, 1, 4, 0, 1, "listen_drop"},
	} {
		r := &tcptraceDrop{Type: tcptraceRecordTypeRECORD_DROP, Count: 1, Family: afInet6, Kind: uint8(tc.kind),
			Backlog: tc.backlog, MaxBacklog: tc.max, SynQueue: tc.synq, Syncookies: tc.syncookies,
			Lport: 3000, Rport: 51234, Daddr: mapped}
		var ev event.Event
		if err := decode(dropRaw(r), 0, testReasons, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Drop.Reason != tc.want || !ev.Drop.ClientKnown || ev.Drop.KernelReason != "" ||
			ev.RAddr.String() != "10.0.0.9" || ev.RPort != 51234 || ev.LAddr.String() != "::" {
			t.Errorf("kind %d queues %d/%d syn %d: %+v %s:%d, want %s from 10.0.0.9:51234",
				tc.kind, tc.backlog, tc.max, tc.synq, ev.Drop, ev.RAddr, ev.RPort, tc.want)
		}
	}
}

// The kernel's SYN-flood flag on a listener: its own kind, not a drop (no
// count, no client), with the namespace's syncookies and whether the flag
// predates tcptrace (the record's reason field).
func TestDecodeSynFlood(t *testing.T) {
	for _, before := range []uint32{0, 1} {
		r := &tcptraceDrop{TsNs: 10, Skaddr: 0xabc, Reason: before, Type: tcptraceRecordTypeRECORD_DROP,
			Netns: 7, MaxBacklog: 4, SynQueue: 4, Family: afInet, Lport: 7074, Syncookies: 1,
			Kind: uint8(tcptraceDropKindDROP_SYN_FLOOD), Owner: tcptraceOwner{Pid: 4242}}
		copy(r.Saddr[:], []byte{127, 0, 0, 1})
		var ev event.Event
		if err := decode(dropRaw(r), 0, testReasons, &ev); err != nil {
			t.Fatal(err)
		}
		d := ev.Drop
		if ev.Kind != event.KindSynFlood || d.Reason != "syn_flood" || d.Count != 0 || d.ClientKnown ||
			d.Syncookies != 1 || d.FloodBefore != (before == 1) || ev.PID != 4242 || ev.LPort != 7074 ||
			ev.LAddr.String() != "127.0.0.1" || ev.Sock != 0xabc || d.SynQueue != 4 || d.MaxBacklog != 4 {
			t.Fatalf("before=%d: %+v", before, ev)
		}
	}
}
