package cli

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/cgroup"
	"github.com/tcptrace/tcptrace/internal/closewait"
	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

func TestParseDefaults(t *testing.T) {
	c, err := Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != output.Text || c.Family != 0 || c.StateMask() != 0 || c.RingSize != 8<<20 || c.Duration != 0 || c.DropRate != 50 {
		t.Fatalf("defaults: %+v", c)
	}
	// Retransmissions and resets only when asked for: on a lossy link or
	// under a scan they are many.
	if !c.EmitStates || !c.EmitDrops || c.EmitRetrans || c.EmitResets {
		t.Fatalf("default record kinds: states %v, drops %v, retransmits %v, resets %v",
			c.EmitStates, c.EmitDrops, c.EmitRetrans, c.EmitResets)
	}
	c, err = Parse([]string{"--events", "states,retransmits"})
	if err != nil || !c.EmitStates || c.EmitDrops || !c.EmitRetrans || c.EmitResets {
		t.Fatalf("--events states,retransmits: %+v, %v", c, err)
	}
	c, err = Parse([]string{"--events", "resets"})
	if err != nil || c.EmitStates || c.EmitDrops || c.EmitRetrans || !c.EmitResets {
		t.Fatalf("--events resets: %+v, %v", c, err)
	}
}

func TestParseAll(t *testing.T) {
	c, err := Parse([]string{"-o", "json", "-p", "1,22", "--pid", "333", "-c", "node", "--port", "80,443",
		"--state", "close_wait,TCP_LISTEN", "-6", "--duration", "5s", "-v", "--ring-size", "32M", "--drop-rate", "7"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != output.JSON || c.Comm != "node" || c.DropRate != 7 || c.Family != 6 || c.Duration != 5*time.Second || !c.Verbose {
		t.Fatalf("got %+v", c)
	}
	if len(c.PIDs) != 3 || c.PIDs[0] != 1 || c.PIDs[2] != 333 {
		t.Fatalf("pids %v", c.PIDs)
	}
	if len(c.Ports) != 2 || c.Ports[1] != 443 {
		t.Fatalf("ports %v", c.Ports)
	}
	if want := uint32(1<<tcpstate.CloseWait | 1<<tcpstate.Listen); c.StateMask() != want {
		t.Fatalf("state mask %#x, want %#x", c.StateMask(), want)
	}
	if c.RingSize != 32<<20 {
		t.Fatalf("ring size %d", c.RingSize)
	}
}

func TestParseErrorsAreUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--bogus"}, {"--state", "nope"}, {"--port", "0"}, {"--port", "65536"}, {"--pid", "-3"},
		{"-o", "xml"}, {"-4", "-6"}, {"--duration", "0s"}, {"--ring-size", "3000"}, {"--ring-size", "1K"},
		{"--hook-kind", "uprobe"}, {"listen"}, {"--state", "NEW_SYN_RECV"}, {"--state", "bound_inactive"},
		{"--errors", "--state", "CLOSE_WAIT,TIME_WAIT"}, {"--events", "retrans"},
		{"--comm", ""}, {"-c", " "}, {"--drop-rate", "x"}, {"--drop-rate", "0"},
	} {
		_, err := Parse(args)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("Parse(%v) = %v, want a usage error", args, err)
		}
	}
}

// closewait takes the same checks of --comm, --pid and --port.
func TestParseCloseWaitErrors(t *testing.T) {
	for _, args := range [][]string{{"--comm", ""}, {"--pid", "x"}, {"--port", "0"}, {"--interval", "0s"}, {"extra"}} {
		_, err := ParseCloseWait(args)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("ParseCloseWait(%v) = %v, want a usage error", args, err)
		}
	}
	c, err := ParseCloseWait([]string{"-c", "a-very-long-command-name"})
	if err != nil || c.Filter.Comm != "a-very-long-com" {
		t.Fatalf("a long --comm: %+v, %v", c, err)
	}
}

func TestExitCode(t *testing.T) {
	var buf bytes.Buffer
	if code := ExitCode(nil, &buf); code != 0 || buf.Len() != 0 {
		t.Fatalf("nil: %d %q", code, buf.String())
	}
	_, err := Parse([]string{"--port", "x"})
	if code := ExitCode(err, &buf); code != 2 || strings.Count(buf.String(), "\n") != 1 {
		t.Fatalf("usage: %d %q", code, buf.String())
	}
	buf.Reset()
	if code := ExitCode(errors.New("boom"), &buf); code != 1 || buf.String() != "tcptrace: boom\n" {
		t.Fatalf("runtime: %d %q", code, buf.String())
	}
}

func TestHelpAndVersionNeedNoPrivilege(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Run(t.Context(), []string{"-h"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--output", "--pid", "--comm", "--port", "--state", "--ipv4", "--ipv6", "--duration", "--verbose", "--version"} {
		if !strings.Contains(out.String(), flag) {
			t.Errorf("help lacks %s", flag)
		}
	}
	if strings.Contains(out.String(), "--hook-kind") {
		t.Error("help shows the hidden --hook-kind")
	}
	out.Reset()
	if err := Run(t.Context(), []string{"--version"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "tcptrace ") {
		t.Fatalf("version: %q %v", out.String(), err)
	}
}

func TestPipelineCommFilter(t *testing.T) {
	var buf bytes.Buffer
	p := &pipeline{out: output.New(&buf, output.JSON, false, nil), comm: "node"}
	e := &event.Event{Kind: event.KindState, Family: event.IPv4,
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1")}
	for _, comm := range []string{"node", "nginx", "nodejs"} {
		e.SetComm(comm)
		if err := p.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	lost := &event.Event{Kind: event.KindLost, Lost: 3}
	p.Record(lost)
	p.Idle()
	out := buf.String()
	if strings.Count(out, `"type":"state"`) != 1 || !strings.Contains(out, `"comm":"node"`) || p.dropped != 2 {
		t.Fatalf("comm filter kept:\n%s", out)
	}
	if !strings.Contains(out, `"type":"lost"`) {
		t.Fatal("lost records must pass every filter")
	}
}

// Retransmissions and resets pass --comm like state changes, and --state and
// --errors, which select state changes, leave them alone.
func TestPipelineRetransmits(t *testing.T) {
	c, err := Parse([]string{"--errors", "--events", "retransmits", "-c", "node", "--close-wait-alert", "1m"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	p := &pipeline{out: output.New(&buf, output.JSON, false, nil), comm: c.Comm, errorsOnly: c.ErrorsOnly,
		stuck: closewait.NewStuck(c.CloseWaitAlert)}
	e := &event.Event{Kind: event.KindRetrans, Family: event.IPv4, OldState: tcpstate.Established, Retrans: 2,
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1")}
	reset := &event.Event{Kind: event.KindReset, Family: event.IPv4, OldState: tcpstate.Close, ResetReason: "tcp_state",
		LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1")}
	for _, comm := range []string{"node", "nginx"} {
		for _, e := range []*event.Event{e, reset} {
			e.SetComm(comm)
			if err := p.Record(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	p.Idle()
	if out := buf.String(); strings.Count(out, `"type":"retransmit"`) != 1 || strings.Count(out, `"type":"reset"`) != 1 ||
		strings.Count(out, `"comm":"node"`) != 2 || p.dropped != 2 {
		t.Fatalf("retransmits and resets kept:\n%s", out)
	}
}

// --state TIME_WAIT keeps the closes that left a timewait socket, also when
// the kernel lets every CLOSE_WAIT change through for the alert.
func TestPipelineTimeWait(t *testing.T) {
	c, err := Parse([]string{"--state", "time_wait"})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	p := &pipeline{out: output.New(&buf, output.JSON, false, nil), stateMask: c.StateMask(),
		stuck: closewait.NewStuck(time.Hour)}
	e := &event.Event{Kind: event.KindState, Family: event.IPv4, OldState: tcpstate.FinWait2,
		NewState: tcpstate.Close, LAddr: netip.MustParseAddr("127.0.0.1"), RAddr: netip.MustParseAddr("127.0.0.1")}
	for _, tw := range []bool{true, false} {
		e.TimeWait = tw
		if err := p.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	p.Idle()
	if out := buf.String(); strings.Count(out, `"type":"state"`) != 1 || !strings.Contains(out, `"time_wait":true`) {
		t.Fatalf("--state TIME_WAIT kept:\n%s", out)
	}
}

// --errors keeps only closes with an error, also when the kernel lets every
// CLOSE_WAIT change through for the alert.
func TestPipelineErrorsOnly(t *testing.T) {
	if _, err := Parse([]string{"--errors", "--state", "CLOSE_WAIT,CLOSE"}); err != nil {
		t.Fatalf("--errors with CLOSE among the states: %v", err)
	}
	c, err := Parse([]string{"--errors"})
	if err != nil || !c.ErrorsOnly || c.StateMask() != 0 {
		t.Fatalf("--errors: %+v, %v", c, err)
	}
	var buf bytes.Buffer
	p := &pipeline{out: output.New(&buf, output.JSON, false, nil), errorsOnly: c.ErrorsOnly,
		stuck: closewait.NewStuck(time.Hour)}
	e := &event.Event{Kind: event.KindState, Family: event.IPv4, LAddr: netip.MustParseAddr("127.0.0.1"),
		RAddr: netip.MustParseAddr("127.0.0.1")}
	for _, ch := range []struct {
		old, new tcpstate.State
		err      syscall.Errno
	}{
		{tcpstate.Established, tcpstate.CloseWait, 0},
		{tcpstate.CloseWait, tcpstate.Close, syscall.EPIPE},
		{tcpstate.LastAck, tcpstate.Close, 0},
	} {
		e.OldState, e.NewState, e.Error = ch.old, ch.new, ch.err
		if err := p.Record(e); err != nil {
			t.Fatal(err)
		}
	}
	p.Idle()
	if out := buf.String(); strings.Count(out, `"type":"state"`) != 1 || !strings.Contains(out, `"error":"EPIPE"`) {
		t.Fatalf("--errors kept:\n%s", out)
	}
}

func TestParseListenersHookKind(t *testing.T) {
	c, err := ParseListeners([]string{"--hook-kind", "raw_tp", "--port", "80"})
	if err != nil || c.HookKind != "raw_tp" || len(c.Ports) != 1 {
		t.Fatalf("ParseListeners: %+v, %v", c, err)
	}
	for _, args := range [][]string{{"--hook-kind", "uprobe"}, {"--bogus"}, {"extra"}} {
		var ue *UsageError
		if _, err := ParseListeners(args); !errors.As(err, &ue) {
			t.Errorf("ParseListeners(%v) = %v, want a usage error", args, err)
		}
	}
	var out, errb bytes.Buffer
	if err := Run(t.Context(), []string{"listeners", "-h"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--port") || strings.Contains(out.String(), "--hook-kind") {
		t.Errorf("listeners help: want --port and not the hidden --hook-kind:\n%s", out.String())
	}
}

// TestWriteListeners: a row says whether the kernel flagged a SYN flood, in
// the text table and in JSON.
func TestWriteListeners(t *testing.T) {
	rows := []tracer.Listener{
		{Family: event.IPv4, Addr: netip.MustParseAddr("127.0.0.1"), Port: 80, Backlog: 5, MaxBacklog: 4,
			SynQueue: 4, SynFlood: true, Drops: 7, PID: 42, Comm: [16]byte{'n', 'g', 'i', 'n', 'x'}, NetNS: 9},
		{Family: event.IPv6, Addr: netip.MustParseAddr("::"), Port: 443, MaxBacklog: 511, PID: 43, Comm: [16]byte{'n', 'o', 'd', 'e'}},
	}
	var text, js bytes.Buffer
	names := cgroup.NewNamesAt(t.TempDir())
	if err := writeListeners(&text, output.Text, rows, names); err != nil {
		t.Fatal(err)
	}
	if err := writeListeners(&js, output.JSON, rows, names); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(text.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "SYNFLOOD") ||
		strings.Fields(lines[1])[5] != "yes" || strings.Fields(lines[2])[5] != "no" {
		t.Errorf("text table:\n%s", text.String())
	}
	objs := strings.Split(strings.TrimSpace(js.String()), "\n")
	if len(objs) != 2 || !strings.Contains(objs[0], `"syn_flood":true`) || !strings.Contains(objs[1], `"syn_flood":false`) {
		t.Errorf("JSON:\n%s", js.String())
	}
}

func TestParseTimeWait(t *testing.T) {
	c, err := ParseTimeWait([]string{"-o", "json", "--interval", "500ms", "-p", "7,8", "--port", "3306", "-c", "a-very-long-command-name"})
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != output.JSON || c.Interval != 500*time.Millisecond || len(c.PIDs) != 2 || c.Ports[0] != 3306 ||
		c.Comm != "a-very-long-com" {
		t.Fatalf("%+v", c)
	}
	if c, err := ParseTimeWait(nil); err != nil || c.Interval != 2*time.Second || c.Output != output.Text {
		t.Fatalf("defaults: %+v, %v", c, err)
	}
	for _, args := range [][]string{{"--interval", "0s"}, {"--duration", "-1s"}, {"--once"}, {"extra"}, {"-o", "yaml"}, {"--comm", ""}} {
		var u *UsageError
		if _, err := ParseTimeWait(args); !errors.As(err, &u) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	var b bytes.Buffer
	TimeWaitUsage(&b)
	if !strings.Contains(b.String(), "over the last 60 s") || !strings.Contains(b.String(), "--interval") {
		t.Errorf("usage:\n%s", b.String())
	}
}
