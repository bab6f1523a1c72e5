package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// record is one JSON line of tcptrace's stream (the output contract).
type record struct {
	Type         string   `json:"type"`
	Time         string   `json:"time"`
	PID          int      `json:"pid"`
	Comm         string   `json:"comm"`
	UID          *int     `json:"uid"`
	Family       string   `json:"family"`
	LAddr        string   `json:"laddr"`
	LPort        uint16   `json:"lport"`
	RAddr        string   `json:"raddr"`
	RPort        uint16   `json:"rport"`
	OldState     string   `json:"old_state"`
	NewState     string   `json:"new_state"`
	State        string   `json:"state"`
	TimeWait     *bool    `json:"time_wait"`
	Error        *string  `json:"error"`
	Retrans      *uint32  `json:"retrans"`
	InStateMS    *float64 `json:"in_state_ms"`
	PIDs         []int    `json:"pids"`
	Cgroup       *string  `json:"cgroup"`
	Exited       bool     `json:"owner_exited"`
	NetNS        uint32   `json:"netns"`
	Sock         string   `json:"sock"`
	Count        uint64   `json:"count"`
	Reason       string   `json:"reason"`
	KernelReason *string  `json:"kernel_reason"`
	Backlog      *uint32  `json:"backlog"`
	MaxBacklog   *uint32  `json:"max_backlog"`
	Syncookies   *uint8   `json:"syncookies"`
	Action       string   `json:"action"`
	BeforeStart  *bool    `json:"before_start"`
	AgeSeconds   *float64 `json:"age_seconds"`
	AgeAtLeast   *float64 `json:"age_at_least_seconds"`
}

// tracerProc is a running tcptrace (the test binary in the tcptrace role).
type tracerProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	recs   []record
	bad    []string // stdout lines that are not valid JSON records
	stderr bytes.Buffer
	ready  chan struct{}
	gate   chan struct{} // stdout is read only once this is closed
	exited chan struct{} // closed once the process is reaped; then err is set
	err    error
}

// startTracer runs tcptrace with args (JSON output is added) and waits until
// it says it is tracing.
func startTracer(t *testing.T, args ...string) *tracerProc {
	t.Helper()
	p := newTracer(t, append([]string{"-o", "json"}, args...)...)
	close(p.gate)
	p.waitReady()
	return p
}

// startRows runs a tcptrace table (args: a subcommand with -o json), waits
// until its stderr has a line containing ready, and returns its rows as they
// come, each line decoded into a T (lines that are not are left out), until
// it exits.
func startRows[T any](t *testing.T, ready string, args ...string) <-chan T {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), roleEnv+"=tcptrace")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Its stderr, shown if the test fails.
	var (
		mu     sync.Mutex
		stderr strings.Builder
	)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		mu.Lock()
		defer mu.Unlock()
		if t.Failed() {
			t.Logf("tcptrace %s stderr:\n%s", args[0], stderr.String())
		}
	})
	isReady := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			mu.Lock()
			stderr.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), ready) {
				isReady <- true
			}
		}
		close(isReady)
	}()
	rows := make(chan T, 1024)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for sc.Scan() {
			var r T
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				rows <- r
			}
		}
		close(rows)
	}()
	select {
	case ok := <-isReady:
		if !ok {
			t.Fatalf("tcptrace %s exited before it was ready", args[0])
		}
	case <-time.After(waitLong):
		t.Fatalf("tcptrace %s not ready", args[0])
	}
	return rows
}

// hookKinds are the hook paths a test runs side by side, in the order
// started: the best the kernel has, raw_tp, and the classic tracepoint (whose
// tracer may have mounted tracefs, and so stops first).
var hookKinds = []string{"default", "raw_tp", "tracepoint"}

// startTracerPerHook starts one tracer with args on each of hookKinds.
func startTracerPerHook(t *testing.T, args ...string) map[string]*tracerProc {
	t.Helper()
	out := map[string]*tracerProc{}
	for _, kind := range hookKinds {
		a := args
		if kind != "default" {
			a = append(append([]string(nil), args...), "--hook-kind", kind)
		}
		out[kind] = startTracer(t, a...)
	}
	return out
}

// stopTracersPerHook stops what startTracerPerHook started, cleanly, in
// reverse order (the classic tracepoint's first).
func stopTracersPerHook(tracers map[string]*tracerProc) {
	for i := len(hookKinds) - 1; i >= 0; i-- {
		tracers[hookKinds[i]].stopClean()
	}
}

// activeHook is the hook -v says is active for feature, "" if none.
func activeHook(stderr, feature string) string {
	for _, line := range strings.Split(stderr, "\n") {
		if h, ok := strings.CutPrefix(line, "tcptrace: hook: "+feature+": "); ok {
			if h, ok := strings.CutSuffix(h, " (active)"); ok {
				return h
			}
		}
	}
	return ""
}

func newTracer(t *testing.T, args ...string) *tracerProc {
	t.Helper()
	return newTracerOpts(t, false, args...)
}

// newTracerOpts starts tcptrace; with discard its stdout is read but not kept.
func newTracerOpts(t *testing.T, discard bool, args ...string) *tracerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &tracerProc{t: t, ready: make(chan struct{}), gate: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(exe, args...)
	p.cmd.Env = append(os.Environ(), roleEnv+"=tcptrace")
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	readers.Add(2)
	go func() {
		// Reap only after both pipes are drained, as os/exec requires.
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	go func() {
		defer readers.Done()
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "tracing TCP state changes") {
				once.Do(func() { close(p.ready) })
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() {
		defer readers.Done()
		<-p.gate
		if discard {
			io.Copy(io.Discard, stdout)
			return
		}
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var r record
			err := json.Unmarshal(sc.Bytes(), &r)
			p.mu.Lock()
			if err != nil || r.Type == "" {
				p.bad = append(p.bad, sc.Text())
			} else {
				p.recs = append(p.recs, r)
			}
			p.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
	}()
	// Interrupt first: killed, a tracer that mounted tracefs would leave it
	// mounted, and later tests would find the system changed.
	t.Cleanup(func() {
		p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.exited:
		case <-time.After(3 * time.Second):
			p.cmd.Process.Kill()
		}
	})
	return p
}

func (p *tracerProc) waitReady() {
	p.t.Helper()
	select {
	case <-p.ready:
	case <-p.exited:
		p.t.Fatalf("tcptrace exited before tracing (%v); stderr:\n%s", p.err, p.stderrText())
	case <-time.After(waitLong):
		p.t.Fatalf("tcptrace not ready within %v; stderr:\n%s", waitLong, p.stderrText())
	}
}

func (p *tracerProc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// stop sends SIGINT, waits for the exit and for stdout to drain, and returns
// the exit code.
func (p *tracerProc) stop() int {
	p.t.Helper()
	p.cmd.Process.Signal(os.Interrupt)
	return p.wait()
}

func (p *tracerProc) wait() int {
	p.t.Helper()
	select {
	case <-p.exited:
		if ee, ok := p.err.(*exec.ExitError); ok {
			return ee.ExitCode()
		} else if p.err != nil {
			p.t.Fatalf("wait for tcptrace: %v", p.err)
		}
		return 0
	case <-time.After(waitLong):
		p.cmd.Process.Kill()
		p.t.Fatalf("tcptrace did not exit within %v; stderr:\n%s", waitLong, p.stderrText())
	}
	return -1
}

// stopClean stops tcptrace and fails the test unless it exited 0 with a
// summary line and only valid JSON on stdout.
func (p *tracerProc) stopClean() {
	p.t.Helper()
	if code := p.stop(); code != 0 {
		p.t.Fatalf("tcptrace exit code %d; stderr:\n%s", code, p.stderrText())
	}
	if !strings.Contains(p.stderrText(), " events, ") {
		p.t.Errorf("no exit summary on stderr:\n%s", p.stderrText())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.bad) > 0 {
		p.t.Errorf("stdout carried %d lines that are not records, first: %q", len(p.bad), p.bad[0])
	}
}

// records returns the records of one type seen so far in network namespace ns.
func (p *tracerProc) records(typ string, ns *netNS) []record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []record
	for _, r := range p.recs {
		if r.Type == typ && r.NetNS == ns.ino {
			out = append(out, r)
		}
	}
	return out
}

// states returns the state records seen so far in network namespace ns.
func (p *tracerProc) states(ns *netNS) []record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []record
	for _, r := range p.recs {
		if r.Type == "state" && r.NetNS == ns.ino {
			out = append(out, r)
		}
	}
	return out
}

// lost sums the counts of the lost records seen so far (records the kernel
// side found no room for, whatever their namespace).
func (p *tracerProc) lost() uint64 { return p.counted("lost") }

// counted sums the counts of the records of type typ seen so far.
func (p *tracerProc) counted(typ string) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n uint64
	for _, r := range p.recs {
		if r.Type == typ {
			n += r.Count
		}
	}
	return n
}

// waitStates waits until ns has at least n state records.
func (p *tracerProc) waitStates(ns *netNS, n int) []record {
	p.t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		got := p.states(ns)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("saw %d state records in the test namespace, want %d:\n%s", len(got), n, dump(got))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dump(rs []record) string {
	var b strings.Builder
	for _, r := range rs {
		b.WriteString(r.String())
		b.WriteByte('\n')
	}
	return b.String()
}

func (r record) String() string {
	j, _ := json.Marshal(r)
	return string(j)
}
