package output

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

func sample() *event.Event {
	e := &event.Event{
		Kind:         event.KindState,
		Time:         time.Date(2026, 11, 21, 4, 33, 18, 123456789, time.UTC).UnixNano(),
		Sock:         0xffff8881066f9280,
		NetNS:        4026531840,
		PID:          2329,
		UID:          1000,
		CgroupPath:   "/system.slice/app.service",
		Family:       event.IPv4,
		LAddr:        netip.MustParseAddr("127.0.0.1"),
		RAddr:        netip.MustParseAddr("10.0.0.9"),
		LPort:        40407,
		RPort:        36120,
		OldState:     tcpstate.Established,
		NewState:     tcpstate.CloseWait,
		InState:      1234567 * time.Nanosecond,
		InStateKnown: true,
	}
	e.SetComm("node")
	return e
}

func TestJSONKeysAndValues(t *testing.T) {
	line := AppendJSON(nil, sample())
	if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("want exactly one line, got %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("invalid JSON %q: %v", line, err)
	}
	want := map[string]any{
		"type": "state", "time": "2026-11-21T04:33:18.123456789Z", "pid": 2329.0, "comm": "node",
		"family": "ipv4", "laddr": "127.0.0.1", "lport": 40407.0, "raddr": "10.0.0.9", "rport": 36120.0,
		"old_state": "ESTABLISHED", "new_state": "CLOSE_WAIT", "in_state_ms": 1.235,
		"uid": 1000.0, "netns": 4026531840.0, "sock": "ffff8881066f9280",
		"pids": []any{2329.0}, "cgroup": "/system.slice/app.service", "owner_exited": false,
	}
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if len(m) != len(want) {
		t.Errorf("keys = %d, want %d: %s", len(m), len(want), line)
	}
}

func TestJSONOwnerVariants(t *testing.T) {
	e := sample()
	e.PIDs = []uint32{2329, 17}
	e.OwnerExited = true
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(m["pids"]) != "[2329 17]" || m["owner_exited"] != true {
		t.Fatalf("shared, exited: %v", m)
	}
	e = sample()
	e.PID, e.CgroupPath = 0, ""
	e.SetComm("")
	m = nil
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["pid"] != 0.0 || fmt.Sprint(m["pids"]) != "[]" || m["uid"] != nil || m["cgroup"] != nil {
		t.Fatalf("unknown owner: %v", m)
	}
	if line := string(AppendText(nil, e, time.UTC)); !strings.Contains(line, " -       ?    ") {
		t.Fatalf("unknown owner in text: %q", line)
	}
}

func TestJSONUnknownInStateIsNull(t *testing.T) {
	e := sample()
	e.InStateKnown = false
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if v, ok := m["in_state_ms"]; !ok || v != nil {
		t.Fatalf("in_state_ms = %#v, want null", v)
	}
}

func TestJSONIPv6(t *testing.T) {
	e := sample()
	e.Family = event.IPv6
	e.LAddr = netip.MustParseAddr("::1")
	e.RAddr = netip.MustParseAddr("2001:db8::7")
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["family"] != "ipv6" || m["laddr"] != "::1" || m["raddr"] != "2001:db8::7" {
		t.Fatalf("got %v", m)
	}
}

func TestJSONLost(t *testing.T) {
	e := &event.Event{Kind: event.KindLost, Time: 0, Lost: 44}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["type"] != "lost" || m["count"] != 44.0 {
		t.Fatalf("got %v", m)
	}
}

func TestGapsRecord(t *testing.T) {
	e := &event.Event{Kind: event.KindGaps, Time: 0, Lost: 3}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["type"] != "gaps" || m["count"] != 3.0 {
		t.Fatalf("got %v", m)
	}
	text := string(AppendText(nil, e, time.UTC))
	if !strings.Contains(text, " GAPS 3 sockets ") || !strings.HasSuffix(text, "\n") || strings.Count(text, "\n") != 1 {
		t.Fatalf("text line %q", text)
	}
}

func TestJSONStringEscaping(t *testing.T) {
	for _, in := range []string{`a"b`, `back\slash`, "tab\there", "\x01ctl", "caf\xc3\xa9", "bad\xffbyte"} {
		out := AppendJSONString(nil, []byte(in))
		var got string
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q -> %s: %v", in, out, err)
		}
		want := strings.ToValidUTF8(in, "\uFFFD")
		if got != want {
			t.Errorf("%q round-trips to %q, want %q", in, got, want)
		}
	}
}

func TestTextLine(t *testing.T) {
	line := string(AppendText(nil, sample(), time.UTC))
	want := "04:33:18.123 2329    node            127.0.0.1:40407        10.0.0.9:36120         ESTABLISHED  CLOSE_WAIT   1.235\n"
	if line != want {
		t.Fatalf("got\n%q\nwant\n%q", line, want)
	}
}

func TestTextColumnsAlignWithHeader(t *testing.T) {
	e := sample()
	e.InStateKnown = false
	line := string(AppendText(nil, e, time.UTC))
	for _, col := range []string{"PID", "COMM", "LOCAL", "REMOTE", "OLD", "NEW", "MS"} {
		i := strings.Index(textHeader, col)
		if i < 0 || i >= len(line) || line[i-1] != ' ' || line[i] == ' ' {
			t.Errorf("column %s at %d does not start a field in %q", col, i, line)
		}
	}
}

func TestTextIPv6Brackets(t *testing.T) {
	e := sample()
	e.Family = event.IPv6
	e.LAddr = netip.MustParseAddr("::1")
	if line := string(AppendText(nil, e, time.UTC)); !strings.Contains(line, "[::1]:40407") {
		t.Fatalf("got %q", line)
	}
}

func TestTextHostileComm(t *testing.T) {
	e := sample()
	e.SetComm("x\x1b[2Jy")
	if line := string(AppendText(nil, e, time.UTC)); strings.ContainsRune(line, 0x1b) {
		t.Fatalf("escape byte reached the terminal: %q", line)
	}
}

func TestWriterHeaderOnceAndFlush(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, Text, false, time.UTC)
	for i := 0; i < 3; i++ {
		if err := w.Write(sample()); err != nil {
			t.Fatal(err)
		}
	}
	if buf.Len() != 0 {
		t.Fatalf("block-buffered writer wrote before Flush: %q", buf.String())
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "TIME "); n != 1 {
		t.Fatalf("header printed %d times", n)
	}
	if n := strings.Count(buf.String(), "\n"); n != 4 {
		t.Fatalf("lines = %d, want 4", n)
	}
}

// Records are formatted in the writer's buffer and written in blocks: every
// one must come out whole and in order across them, a long one too.
func TestWriterAcrossFlushes(t *testing.T) {
	for _, f := range []Format{JSON, Text} {
		var got, want bytes.Buffer
		w := New(&got, f, false, time.UTC)
		var ref Formatter
		ref.loc = time.UTC
		if f == Text {
			want.WriteString(textHeader)
		}
		e := sample()
		for i := 0; i < 2000; i++ {
			e.Time += 1000
			e.LPort = uint16(i)
			e.CgroupPath = "/"
			if i%500 == 7 { // longer than the room kept for one record
				e.CgroupPath = strings.Repeat("/x", 1000)
			}
			if err := w.Write(e); err != nil {
				t.Fatal(err)
			}
			if f == JSON {
				want.Write(ref.AppendJSON(nil, e))
			} else {
				want.Write(ref.AppendText(nil, e))
			}
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got.Len() < 64<<10 || !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("%v: wrote %d bytes, want the %d bytes formatted one by one", f, got.Len(), want.Len())
		}
	}
}

// seekRecorder is an output that knows its offset and records every write.
type seekRecorder struct {
	bytes.Buffer
	start  int64
	writes [][2]int64 // offset and length of each write
}

func (r *seekRecorder) Write(p []byte) (int, error) {
	r.writes = append(r.writes, [2]int64{r.start + int64(r.Len()), int64(len(p))})
	return r.Buffer.Write(p)
}

func (r *seekRecorder) Seek(offset int64, whence int) (int64, error) {
	if offset != 0 || whence != io.SeekCurrent {
		return 0, errors.New("only the current offset")
	}
	return r.start + int64(r.Len()), nil
}

// Full writes end on block boundaries of the output, counted from its
// offset when the writer was made, whatever the flushes in between left.
func TestWriterWritesWholeBlocks(t *testing.T) {
	out := &seekRecorder{start: 1000}
	w := New(out, JSON, false, time.UTC)
	var want bytes.Buffer
	var ref Formatter
	ref.loc = time.UTC
	e := sample()
	fromFlush := map[int]bool{}
	for i := 0; i < 5000; i++ {
		e.Time += 1000
		if err := w.Write(e); err != nil {
			t.Fatal(err)
		}
		want.Write(ref.AppendJSON(nil, e))
		if i%700 == 699 { // the drain timer
			n := len(out.writes)
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			for k := n; k < len(out.writes); k++ {
				fromFlush[k] = true
			}
		}
	}
	w.Flush()
	if !bytes.Equal(out.Bytes(), want.Bytes()) {
		t.Fatalf("wrote %d bytes, want the %d bytes formatted one by one", out.Len(), want.Len())
	}
	full := 0
	for k, wr := range out.writes[:len(out.writes)-1] {
		if fromFlush[k] {
			continue
		}
		full++
		if end := wr[0] + wr[1]; end%blockSize != 0 || wr[1] > blockSize {
			t.Fatalf("write %d: %d bytes at %d, ends off a %d-byte boundary", k, wr[1], wr[0], blockSize)
		}
	}
	if full < 10 {
		t.Fatalf("only %d full writes", full)
	}
}

func TestWriterLineBuffered(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, JSON, true, nil)
	if err := w.Write(sample()); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(buf.String(), "}\n") {
		t.Fatalf("line-buffered writer held the record: %q", buf.String())
	}
}

func TestParseFormat(t *testing.T) {
	if f, err := ParseFormat("json"); err != nil || f != JSON {
		t.Fatal("json")
	}
	if _, err := ParseFormat("yaml"); err == nil {
		t.Fatal("yaml accepted")
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := sample()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendJSON(buf[:0], e)
	}
}

func BenchmarkAppendText(b *testing.B) {
	e := sample()
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf = AppendText(buf[:0], e, time.UTC)
	}
}

func dropSample() *event.Event {
	e := sample()
	e.Kind = event.KindDrop
	e.LAddr, e.LPort = netip.MustParseAddr("10.0.0.5"), 3000
	e.RAddr, e.RPort = netip.MustParseAddr("10.0.0.9"), 51234
	e.Drop = event.Drop{Reason: "accept_queue_full", KernelReason: "tcp_listen_overflow", Count: 1,
		Backlog: 129, MaxBacklog: 128, SynQueue: 3, ClientKnown: true}
	return e
}

func TestDropText(t *testing.T) {
	line := string(AppendText(nil, dropSample(), time.UTC))
	want := "04:33:18.123 DROP accept queue full (129/128, syn queue 3) 10.0.0.5:3000 <- 10.0.0.9:51234 node 2329\n"
	if line != want {
		t.Fatalf("got\n%q\nwant\n%q", line, want)
	}
	e := dropSample()
	e.Drop.Count, e.Drop.ClientKnown = 12, false
	if line := string(AppendText(nil, e, time.UTC)); !strings.Contains(line, "DROP 12x accept queue full") || !strings.Contains(line, "<- ? node") {
		t.Fatalf("counted: %q", line)
	}
}

func TestDropJSON(t *testing.T) {
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, dropSample()), &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"type": "drop", "reason": "accept_queue_full", "kernel_reason": "tcp_listen_overflow",
		"count": 1.0, "pid": 2329.0, "comm": "node", "laddr": "10.0.0.5", "lport": 3000.0, "raddr": "10.0.0.9",
		"rport": 51234.0, "backlog": 129.0, "max_backlog": 128.0, "syn_queue": 3.0}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	e := dropSample()
	e.Drop.ClientKnown, e.Drop.KernelReason, e.Drop.Count = false, "", 7
	e.Drop.TopClients = []event.ClientCount{{Addr: netip.MustParseAddr("10.0.0.9"), Count: 5}}
	m = nil
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["raddr"] != nil || m["rport"] != nil || m["kernel_reason"] != nil || m["count"] != 7.0 ||
		fmt.Sprint(m["top_clients"]) != "[map[count:5 raddr:10.0.0.9]]" {
		t.Fatalf("counted: %v", m)
	}
}

// The cached formatting must match the standard library's, second after second.
func TestCachedTimesMatchTheStandardLibrary(t *testing.T) {
	var f Formatter
	f.loc = time.FixedZone("X", 3*3600+1800)
	ns := time.Date(2026, 11, 21, 4, 33, 18, 0, time.UTC).UnixNano()
	for i := 0; i < 100000; i++ {
		ns += int64(i%7)*123456789 + 1
		tm := time.Unix(0, ns)
		if got, want := string(f.appendJSONTime(nil, ns)), tm.UTC().Format("2006-01-02T15:04:05.000000000Z07:00"); got != want {
			t.Fatalf("json %q, want %q", got, want)
		}
		if got, want := string(f.appendTextTime(nil, ns)), tm.In(f.loc).Format("15:04:05.000"); got != want {
			t.Fatalf("text %q, want %q", got, want)
		}
	}
	if got := string(f.appendJSONTime(nil, -1)); got != "1969-12-31T23:59:59.999999999Z" {
		t.Fatalf("before the epoch: %q", got)
	}
}

// benchmarkWriter measures the per-record path as the stream uses it: one
// Writer, its caches warm, records a microsecond apart.
func benchmarkWriter(b *testing.B, f Format) {
	w := New(io.Discard, f, false, time.UTC)
	e := sample()
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		e.Time += 1000
		w.Write(e)
	}
}

func BenchmarkWriterJSON(b *testing.B) { benchmarkWriter(b, JSON) }
func BenchmarkWriterText(b *testing.B) { benchmarkWriter(b, Text) }

// Other TCP drops have no listener: no queue figures; an IPv4 client of a
// dual-stack listener prints without brackets.
func TestOtherDropAndMappedClient(t *testing.T) {
	e := dropSample()
	e.PID = 0
	e.Drop = event.Drop{Reason: "no_socket", KernelReason: "no_socket", Count: 1, Other: true, ClientKnown: true}
	want := "04:33:18.123 DROP no socket 10.0.0.5:3000 <- 10.0.0.9:51234 ? -\n"
	if line := string(AppendText(nil, e, time.UTC)); line != want {
		t.Fatalf("got\n%q\nwant\n%q", line, want)
	}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["backlog"] != nil || m["max_backlog"] != nil || m["syn_queue"] != nil || m["reason"] != "no_socket" || m["pid"] != 0.0 {
		t.Fatalf("json: %v", m)
	}
	e = dropSample()
	e.Family, e.LAddr = event.IPv6, netip.IPv6Unspecified()
	if line := string(AppendText(nil, e, time.UTC)); !strings.Contains(line, " [::]:3000 <- 10.0.0.9:51234 ") {
		t.Fatalf("dual-stack: %q", line)
	}
}

// The owner keys are cached per owner: owners sharing a slot, and an owner
// whose fields change, must still come out as rendered afresh.
func TestJSONOwnerCache(t *testing.T) {
	f := Formatter{owners: new([ownerSlots]ownerJSON)}
	for i := 0; i < 200; i++ {
		e := sample()
		e.PID = uint32(1 + (i%3)*ownerSlots) // three owners, one slot
		e.OwnerExited = i%5 == 0
		e.UID = uint32(i % 2)
		if i%7 == 0 {
			e.CgroupPath = ""
		}
		if i%11 == 0 {
			e.SetComm("other")
		}
		if i%13 == 0 {
			e.PIDs = []uint32{e.PID, 99}
		}
		if i%17 == 0 {
			e.PID, e.PIDs = 0, nil
		}
		got, want := string(f.AppendJSON(nil, e)), string(AppendJSON(nil, e))
		if got != want {
			t.Fatalf("record %d: cached\n%s\nfresh\n%s", i, got, want)
		}
		if i%13 == 0 && !strings.Contains(got, `"pids":[`+fmt.Sprint(e.PID)+`,99]`) && e.PID != 0 {
			t.Fatalf("record %d: shared socket's holders missing: %s", i, got)
		}
	}
}

func TestAppendMillis(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0.000"}, {499, "0.000"}, {500, "0.001"}, {1234567, "1.235"}, {999999500, "1000.000"},
		{7 * time.Hour, "25200000.000"}, {-1500, "-0.002"},
	} {
		if got := string(appendMillis(nil, c.d)); got != c.want {
			t.Errorf("appendMillis(%d) = %q, want %q", c.d, got, c.want)
		}
	}
	// Agrees with the float rendering it replaced, away from exact halves.
	for d := time.Duration(1); d < 5*time.Second; d = d*3 + 7 {
		if d%1000 == 500 {
			continue
		}
		want := strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
		if got := string(appendMillis(nil, d)); got != want {
			t.Errorf("appendMillis(%d) = %q, float gives %q", d, got, want)
		}
	}
}

// TestAddrCache: addresses from the formatter's cache read exactly as
// AppendTo writes them, as more addresses come than it has slots.
func TestAddrCache(t *testing.T) {
	f := Formatter{addrs: new([addrSlots]addrText)}
	addrs := []netip.Addr{
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("::1"),
		netip.MustParseAddr("fe80::1%eth0"), netip.MustParseAddr("2001:db8::ffff:1:2:3"),
		netip.MustParseAddr("192.168.0.255"), {}, netip.MustParseAddr("127.0.0.1"),
	}
	for round := range 3 {
		for i, a := range addrs {
			got := string(f.appendAddr([]byte("x"), a))
			if want := "x" + string(a.AppendTo(nil)); got != want {
				t.Fatalf("round %d, address %d: %q, want %q", round, i, got, want)
			}
		}
	}
}

func TestAppendHexMatchesStrconv(t *testing.T) {
	vals := []uint64{0, 1, 9, 10, 15, 16, 255, 256, 0xffff88818fb7e5c0, ^uint64(0), 1 << 63}
	for i := uint64(1); i != 0 && len(vals) < 2000; i = i*3 + 7 {
		vals = append(vals, i)
	}
	for _, v := range vals {
		if got, want := string(appendHex([]byte("x"), v)), "x"+strconv.FormatUint(v, 16); got != want {
			t.Fatalf("%#x: %q, want %q", v, got, want)
		}
	}
}

// The namespace is rendered once and reused while it stays the same: a
// record in another must still carry its own.
func TestSocketTailAcrossNamespaces(t *testing.T) {
	var f Formatter
	f.loc = time.UTC
	e := sample()
	for _, ns := range []uint32{4026531833, 4026531833, 7, 0, 4294967295, 4026531833} {
		e.NetNS = ns
		var m map[string]any
		line := f.AppendJSON(nil, e)
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if got := m["netns"].(float64); got != float64(ns) {
			t.Fatalf("netns %d rendered as %v in %s", ns, got, line)
		}
	}
}

func TestAppendUintMatchesStrconv(t *testing.T) {
	vals := []uint64{0, 1, 9, 10, 11, 99, 100, 101, 999, 1000, 65535, 4294967295, ^uint64(0)}
	for i := uint64(1); i != 0 && len(vals) < 2000; i = i*3 + 7 {
		vals = append(vals, i, i%100000)
	}
	for _, v := range vals {
		if got, want := string(appendUint([]byte("x"), v)), "x"+strconv.FormatUint(v, 10); got != want {
			t.Fatalf("%d: %q, want %q", v, got, want)
		}
	}
}

// A close that left a timewait socket: text shows the connection's new state
// as ss does, TIME_WAIT; JSON keeps the kernel's CLOSE and says time_wait,
// which every change into CLOSE carries and no other change does.
func TestTimeWait(t *testing.T) {
	e := sample()
	e.OldState, e.NewState, e.TimeWait = tcpstate.FinWait2, tcpstate.Close, true
	line := string(AppendText(nil, e, time.UTC))
	if want := "FIN_WAIT2    TIME_WAIT    1.235\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	for _, tc := range []struct {
		newState tcpstate.State
		timeWait bool
		want     string // the time_wait value, "" for none
	}{
		{tcpstate.Close, true, "true"},
		{tcpstate.Close, false, "false"},
		{tcpstate.CloseWait, false, ""},
	} {
		e.NewState, e.TimeWait = tc.newState, tc.timeWait
		var m map[string]any
		if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
			t.Fatal(err)
		}
		v, ok := m["time_wait"]
		if got := fmt.Sprint(v); ok != (tc.want != "") || ok && got != tc.want || m["new_state"] != tc.newState.String() {
			t.Errorf("%v (time wait %v): time_wait %v (present %v), new_state %v", tc.newState, tc.timeWait, v, ok, m["new_state"])
		}
	}
}

// A change into CLOSE carries the error the socket died of: text in the
// ERROR column under its header, JSON as "error" (null when none, absent on
// other changes).
func TestCloseError(t *testing.T) {
	e := sample()
	e.OldState, e.NewState, e.Error = tcpstate.Established, tcpstate.Close, syscall.ECONNRESET
	line := string(AppendText(nil, e, time.UTC))
	if want := "ESTABLISHED  CLOSE        1.235      ECONNRESET\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	if i := strings.Index(textHeader, "ERROR"); i < 0 || i >= len(line) || line[i-1] != ' ' || line[i] != 'E' {
		t.Errorf("ERROR at %d of the header does not start the error in %q", i, line)
	}
	e.Error = 4095 // no name
	if line := string(AppendText(nil, e, time.UTC)); !strings.HasSuffix(line, " errno 4095\n") {
		t.Errorf("text %q, want the number of an unnamed errno", line)
	}
	for _, tc := range []struct {
		newState tcpstate.State
		timeWait bool
		err      syscall.Errno
		want     string // the error value, "" for none
	}{
		{tcpstate.Close, false, syscall.ETIMEDOUT, "ETIMEDOUT"},
		{tcpstate.Close, false, syscall.ECONNREFUSED, "ECONNREFUSED"},
		{tcpstate.Close, false, 0, "<nil>"},
		{tcpstate.Close, true, 0, "<nil>"},
		{tcpstate.CloseWait, false, 0, ""},
	} {
		e.NewState, e.TimeWait, e.Error = tc.newState, tc.timeWait, tc.err
		if tc.err == 0 {
			if line := string(AppendText(nil, e, time.UTC)); !strings.HasSuffix(line, " 1.235\n") {
				t.Errorf("text %q: no error, yet something follows MS", line)
			}
		}
		var m map[string]any
		if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
			t.Fatal(err)
		}
		v, ok := m["error"]
		if got := fmt.Sprint(v); ok != (tc.want != "") || ok && got != tc.want {
			t.Errorf("%v (error %d): error %v (present %v), want %q", tc.newState, tc.err, v, ok, tc.want)
		}
	}
	e.NewState, e.TimeWait, e.Error = tcpstate.Close, false, syscall.ECONNRESET
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendJSON(buf[:0], e)
		buf = AppendText(buf[:0], e, time.UTC)
	}); n != 0 {
		t.Errorf("%v allocations per record with an error, want 0", n)
	}
}

// A change into CLOSE carries what the connection retransmitted: text in the
// RETRANS column under its header (with "-" under ERROR when there was no
// error; nothing when there was neither), JSON as "retrans" (0 too, absent on
// other changes).
func TestCloseRetrans(t *testing.T) {
	e := sample()
	e.OldState, e.NewState, e.Error, e.Retrans = tcpstate.Established, tcpstate.Close, syscall.ETIMEDOUT, 7
	line := string(AppendText(nil, e, time.UTC))
	if want := "ESTABLISHED  CLOSE        1.235      ETIMEDOUT      7\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	col := func(name, line string) {
		t.Helper()
		if i := strings.Index(textHeader, name); i < 1 || i >= len(line) || line[i-1] != ' ' || line[i] == ' ' {
			t.Errorf("%s at %d of the header does not start a field in %q", name, i, line)
		}
	}
	col("ERROR", line)
	col("RETRANS", line)
	e.Error = syscall.EADDRNOTAVAIL // the longest name still leaves a space
	line = string(AppendText(nil, e, time.UTC))
	col("RETRANS", line)
	e.OldState, e.Error, e.TimeWait = tcpstate.FinWait2, 0, true
	line = string(AppendText(nil, e, time.UTC))
	if want := "FIN_WAIT2    TIME_WAIT    1.235      -              7\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	col("RETRANS", line)
	e.Retrans = 0
	if line := string(AppendText(nil, e, time.UTC)); !strings.HasSuffix(line, " 1.235\n") {
		t.Errorf("text %q: neither error nor retransmissions, yet something follows MS", line)
	}
	for _, tc := range []struct {
		newState tcpstate.State
		timeWait bool
		err      syscall.Errno
		retrans  uint32
		want     string // the retrans value, "" for none
	}{
		{tcpstate.Close, false, syscall.ETIMEDOUT, 5, "5"},
		{tcpstate.Close, false, 0, 4294967295, "4.294967295e+09"},
		{tcpstate.Close, true, 0, 2, "2"},
		{tcpstate.Close, false, 0, 0, "0"},
		{tcpstate.CloseWait, false, 0, 3, ""},
	} {
		e.NewState, e.TimeWait, e.Error, e.Retrans = tc.newState, tc.timeWait, tc.err, tc.retrans
		if tc.newState != tcpstate.Close {
			if line := string(AppendText(nil, e, time.UTC)); !strings.HasSuffix(line, " 1.235\n") {
				t.Errorf("text %q: not a close, yet something follows MS", line)
			}
		}
		var m map[string]any
		if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
			t.Fatal(err)
		}
		v, ok := m["retrans"]
		if got := fmt.Sprint(v); ok != (tc.want != "") || ok && got != tc.want {
			t.Errorf("%v (retrans %d): retrans %v (present %v), want %q", tc.newState, tc.retrans, v, ok, tc.want)
		}
	}
	e.NewState, e.TimeWait, e.Error, e.Retrans = tcpstate.Close, false, syscall.ETIMEDOUT, 12
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendJSON(buf[:0], e)
		buf = AppendText(buf[:0], e, time.UTC)
	}); n != 0 {
		t.Errorf("%v allocations per record with retransmissions, want 0", n)
	}
}

// A retransmission: its state under OLD, RETRANS under NEW, the count under
// RETRANS; in JSON its state and count, none of a change's keys.
func TestRetransmit(t *testing.T) {
	e := sample()
	e.Kind, e.OldState, e.NewState, e.Retrans = event.KindRetrans, tcpstate.Established, 0, 3
	e.InState, e.InStateKnown = 0, false
	line := string(AppendText(nil, e, time.UTC))
	if want := "ESTABLISHED  RETRANS      -          -              3\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	if i := strings.Index(textHeader, "RETRANS"); i >= len(line) || line[i-1] != ' ' || line[i] != '3' {
		t.Errorf("the count is not under RETRANS in %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["type"] != "retransmit" || m["state"] != "ESTABLISHED" || m["retrans"] != 3.0 || m["pid"] != 2329.0 || m["lport"] != 40407.0 {
		t.Errorf("json %v", m)
	}
	for _, k := range []string{"old_state", "new_state", "in_state_ms", "error", "time_wait"} {
		if _, ok := m[k]; ok {
			t.Errorf("json has %q: %v", k, m)
		}
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendJSON(buf[:0], e)
		buf = AppendText(buf[:0], e, time.UTC)
	}); n != 0 {
		t.Errorf("%v allocations per retransmission, want 0", n)
	}
}

func TestReset(t *testing.T) {
	e := sample()
	e.Kind, e.OldState, e.NewState, e.ResetReason = event.KindReset, tcpstate.Close, 0, "tcp_abort_on_close"
	e.InState, e.InStateKnown, e.Retrans = 0, false, 0
	line := string(AppendText(nil, e, time.UTC))
	if want := "CLOSE        RESET        -          tcp_abort_on_close\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	if i := strings.Index(textHeader, "ERROR"); i >= len(line) || line[i-1] != ' ' || line[i] != 't' {
		t.Errorf("the reason is not under ERROR in %q", line)
	}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["type"] != "reset" || m["state"] != "CLOSE" || m["reason"] != "tcp_abort_on_close" || m["pid"] != 2329.0 ||
		m["sock"] == nil {
		t.Errorf("json %v", m)
	}
	for _, k := range []string{"old_state", "new_state", "in_state_ms", "error", "time_wait", "retrans"} {
		if _, ok := m[k]; ok {
			t.Errorf("json has %q: %v", k, m)
		}
	}
	buf := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() {
		buf = AppendJSON(buf[:0], e)
		buf = AppendText(buf[:0], e, time.UTC)
	}); n != 0 {
		t.Errorf("%v allocations per reset, want 0", n)
	}

	// Sent for a segment no socket took, by a kernel that gives no reason.
	e.OldState, e.ResetReason, e.Sock, e.PID = 0, "", 0, 0
	line = string(AppendText(nil, e, time.UTC))
	if want := "-            RESET        -\n"; !strings.HasSuffix(line, want) {
		t.Errorf("text %q, want it to end in %q", line, want)
	}
	m = nil
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"state", "reason", "sock"} {
		if v, ok := m[k]; !ok || v != nil {
			t.Errorf("json %q = %v, want null: %v", k, v, m)
		}
	}
}

// The kernel's SYN-flood flag on a listener: the queues, what the kernel
// does with the SYNs past them, and whether the flag predates tcptrace.
func TestSynFlood(t *testing.T) {
	e := dropSample()
	e.Kind = event.KindSynFlood
	e.RAddr, e.RPort = netip.Addr{}, 0
	e.Drop = event.Drop{Reason: "syn_flood", Backlog: 0, MaxBacklog: 4, SynQueue: 4, Syncookies: 1}
	want := "04:33:18.123 SYN FLOOD (0/4, syn queue 4) 10.0.0.5:3000 sending cookies node 2329\n"
	if line := string(AppendText(nil, e, time.UTC)); line != want {
		t.Fatalf("got\n%q\nwant\n%q", line, want)
	}
	var m map[string]any
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	wantJSON := map[string]any{"type": "syn_flood", "pid": 2329.0, "comm": "node", "laddr": "10.0.0.5", "lport": 3000.0,
		"backlog": 0.0, "max_backlog": 4.0, "syn_queue": 4.0, "syncookies": 1.0, "action": "cookies", "before_start": false}
	for k, v := range wantJSON {
		if m[k] != v {
			t.Errorf("%s = %#v, want %#v", k, m[k], v)
		}
	}
	if _, ok := m["raddr"]; ok {
		t.Errorf("a listener's flag has no client: %v", m)
	}

	e.Drop.Syncookies, e.Drop.FloodBefore, e.PID = 0, true, 0
	want = "04:33:18.123 SYN FLOOD (0/4, syn queue 4) 10.0.0.5:3000 dropping SYNs (tcp_syncookies=0) (flagged before tcptrace started) ? -\n"
	if line := string(AppendText(nil, e, time.UTC)); line != want {
		t.Fatalf("got\n%q\nwant\n%q", line, want)
	}
	m = nil
	if err := json.Unmarshal(AppendJSON(nil, e), &m); err != nil {
		t.Fatal(err)
	}
	if m["action"] != "drop" || m["syncookies"] != 0.0 || m["before_start"] != true || m["pid"] != 0.0 {
		t.Fatalf("json: %v", m)
	}
}
