package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// ourPrograms lists loaded BPF programs newer than after, by ID and name.
// Names are cut to 15 bytes by the kernel.
func ourPrograms(t *testing.T, after ebpf.ProgramID) map[ebpf.ProgramID]string {
	t.Helper()
	names := map[string]bool{"state_btf": true, "state_raw": true, "state_tp": true,
		"sys_exit_btf": true, "sys_exit_raw": true, "accept_exit_tp": true, "accept_exit_typed": true, "accept_exit_typ": true, "connect_exit_tp": true, "fork_btf": true, "fork_raw": true, "exec_btf": true, "exec_raw": true, "rename_btf": true, "rename_raw": true,
		"exit_btf": true, "exit_raw": true, "scan_socks": true}
	out := map[ebpf.ProgramID]string{}
	for id := after; ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out
		} else if err != nil {
			t.Fatalf("list BPF programs: %v", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err == nil && names[info.Name] {
			out[id] = info.Name
		}
	}
}

func lastProgramID(t *testing.T) ebpf.ProgramID {
	var last ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(last)
		if err != nil {
			return last
		}
		last = next
	}
}

// linksTo counts BPF links attached for any of progs.
func linksTo(t *testing.T, progs map[ebpf.ProgramID]string) int {
	t.Helper()
	it := new(link.Iterator)
	defer it.Close()
	n := 0
	for it.Next() {
		info, err := it.Link.Info()
		if err == nil {
			if _, ok := progs[info.Program]; ok {
				n++
			}
		}
	}
	if err := it.Err(); err != nil {
		t.Fatalf("list BPF links: %v", err)
	}
	return n
}

// TestCleanExit: while tcptrace runs its programs and links are loaded; after
// SIGINT (and SIGTERM) none of them is left.
func TestCleanExit(t *testing.T) {
	needRoot(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			base := lastProgramID(t)
			tr := startTracer(t)
			progs := ourPrograms(t, base)
			// One program per hook: state changes, syscall exits, forks, execs,
			// renames, exits, the scan. Where tracefs is mounted the system
			// calls have their own tracepoints: two programs, accept's on two
			// (accept4 and accept).
			// Those two attach through perf events: with a BPF link each
			// where the kernel has perf-event links (5.15+), else with none.
			want := 7
			classic := map[ebpf.ProgramID]string{}
			others := map[ebpf.ProgramID]string{}
			for id, name := range progs {
				if strings.HasSuffix(name, "_exit_tp") || strings.HasPrefix(name, "accept_exit_typ") {
					want = 8
					classic[id] = name
				} else {
					others[id] = name
				}
			}
			if len(progs) != want {
				t.Fatalf("while tracing, found programs %v, want %d for the 7 hooks", progs, want)
			}
			if n := linksTo(t, others); n != len(others) {
				t.Fatalf("while tracing, %d links for %d programs %v, want one each", n, len(others), others)
			}
			if n := linksTo(t, classic); len(classic) > 0 && n != 0 && n != 3 {
				t.Fatalf("while tracing, %d links for the system calls' programs %v, want 3 (accept's on two) or none", n, classic)
			}
			tr.cmd.Process.Signal(sig)
			if code := tr.wait(); code != 0 {
				t.Fatalf("exit code %d after %v; stderr:\n%s", code, sig, tr.stderrText())
			}
			// Programs are freed after an RCU grace period: allow a moment.
			deadline := time.Now().Add(5 * time.Second)
			for {
				left := ourPrograms(t, base)
				if len(left) == 0 && linksTo(t, progs) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after %v, still loaded: programs %v, links %d", sig, left, linksTo(t, progs))
				}
				time.Sleep(50 * time.Millisecond)
			}
			if !strings.Contains(tr.stderrText(), "0 lost") {
				t.Errorf("summary missing: %s", tr.stderrText())
			}
		})
	}
}

// TestDuration: --duration ends the run by itself, cleanly.
func TestDuration(t *testing.T) {
	needRoot(t)
	tr := newTracer(t, "--duration", "300ms")
	close(tr.gate)
	if code := tr.wait(); code != 0 {
		t.Fatalf("exit code %d; stderr:\n%s", code, tr.stderrText())
	}
	if !strings.Contains(tr.stderrText(), " events, ") {
		t.Fatalf("no summary: %s", tr.stderrText())
	}
}

// TestTracepointLeavesTracefsAsFound: the classic-tracepoint path mounts
// tracefs when it is missing and unmounts it at exit.
func TestTracepointLeavesTracefsAsFound(t *testing.T) {
	needRoot(t)
	before := tracefsMounted(t)
	tr := startTracer(t, "--hook-kind", "tracepoint")
	if !tracefsMounted(t) {
		t.Fatal("tracepoint path is active but tracefs is not mounted")
	}
	tr.stopClean()
	if after := tracefsMounted(t); after != before {
		t.Fatalf("tracefs mounted before: %v, after: %v", before, after)
	}
}

// TestSyscallTracepointsLeaveNoMount: where tracefs is not mounted, the
// syscalls: tracepoints of accept() and connect() are still the active hook
// (not a program on every system call's exit), and tracefs was mounted for
// their attach in tcptrace's own mount namespace: no process sees it, during
// the run or after. With --no-mount-tracefs, the sys_exit fallback.
func TestSyscallTracepointsLeaveNoMount(t *testing.T) {
	needRoot(t)
	if tracefsMounted(t) {
		unavailable(t, "tracefs is mounted at /sys/kernel/tracing: this test needs a host without it")
	}
	tr := startTracer(t, "-v", "--events", "states")
	const want = "connect port, accept owner: tracepoint/syscalls/sys_exit_accept4,sys_exit_accept,sys_exit_connect (active)"
	if !strings.Contains(tr.stderrText(), want) {
		t.Errorf("-v lacks %q:\n%s", want, tr.stderrText())
	}
	// No thread of tcptrace's, nor this process, sees a tracefs mount.
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/mountinfo", tr.cmd.Process.Pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of tcptrace (pid %d) in /proc: %v", tr.cmd.Process.Pid, err)
	}
	for _, f := range append(tasks, "/proc/self/mountinfo") {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), " - tracefs ") {
			t.Errorf("%s shows a tracefs mount while tcptrace runs:\n%s", f, b)
		}
	}
	tr.stopClean()
	if tracefsMounted(t) {
		t.Error("tracefs is mounted after tcptrace exited")
	}

	tr = startTracer(t, "-v", "--events", "states", "--no-mount-tracefs")
	// accept()'s exit program: the typed walk where the kernel has it.
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`connect port, accept owner: tracepoint/syscalls/sys_exit_accept4,sys_exit_accept,sys_exit_connect not used: attach accept_exit_(tp|typed): tracefs is not mounted at /sys/kernel/tracing and --no-mount-tracefs forbids mounting it`),
		regexp.MustCompile(`connect port, accept owner: tp_btf/sys_exit \(active\)`),
	} {
		if !want.MatchString(tr.stderrText()) {
			t.Errorf("--no-mount-tracefs: -v lacks %q:\n%s", want, tr.stderrText())
		}
	}
	tr.stopClean()
}

func tracefsMounted(t *testing.T) bool {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), " /sys/kernel/tracing tracefs ")
}

// runTcptrace runs tcptrace to completion and returns exit code and stderr.
func runTcptrace(t *testing.T, cred *syscall.Credential, exe string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), roleEnv+"=tcptrace")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stdout.String(), stderr.String()
	} else if err != nil {
		t.Fatalf("run tcptrace: %v", err)
	}
	return 0, stdout.String(), stderr.String()
}

// TestBadInvocations: each mistake is one line on stderr, nothing on stdout,
// and exit code 2; lack of privilege is exit code 1 and says what is needed.
func TestBadInvocations(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "unknown flag: --bogus"},
		{[]string{"--state", "CLOSED"}, `unknown TCP state "CLOSED"`},
		{[]string{"--port", "70000"}, `invalid --port "70000"`},
		{[]string{"--pid", "abc"}, `invalid --pid "abc"`},
		{[]string{"-o", "yaml"}, `unknown output format "yaml"`},
		{[]string{"-4", "-6"}, "-4 and -6 exclude each other"},
		{[]string{"--duration", "-1s"}, "invalid --duration"},
		{[]string{"--duration", "soon"}, `invalid argument "soon" for "--duration"`},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"timewait", "--interval", "0s"}, "invalid --interval 0s"},
		{[]string{"timewait", "--port", "x"}, `invalid --port "x"`},
		{[]string{"timewait", "now"}, `timewait: unexpected argument "now"`},
	} {
		code, stdout, stderr := runTcptrace(t, nil, exe, tc.args...)
		lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
		if code != 2 || stdout != "" || len(lines) != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("tcptrace %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q",
				tc.args, code, stdout, stderr, tc.want)
		}
	}
}

func TestNeedsPrivilege(t *testing.T) {
	needRoot(t)
	// Copy the binary where an unprivileged user can execute it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "tcptrace-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	copyExe := filepath.Join(dir, "tcptrace")
	if err := os.WriteFile(copyExe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runTcptrace(t, &syscall.Credential{Uid: 65534, Gid: 65534}, copyExe)
	if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 ||
		!strings.Contains(stderr, "needs root or CAP_BPF+CAP_PERFMON") {
		t.Fatalf("unprivileged: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

// TestHooksChosen prints the hook tcptrace picks for each feature on this
// kernel (so each vmtest log shows them), checks the per-packet drop path
// against TCPTRACE_DROP_HOOKS where given, and forces each drop hook kind
// this kernel lacks: that must fail in one line naming the hook, exit 1.
func TestHooksChosen(t *testing.T) {
	needRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runTcptrace(t, nil, exe, "-v", "--events", "states,drops,retransmits,resets", "--duration", "1ms")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, stderr)
	}
	active := map[string]string{}
	for _, line := range strings.Split(stderr, "\n") {
		h, ok := strings.CutPrefix(line, "tcptrace: hook: ")
		switch {
		case ok && strings.HasSuffix(h, " (active)"):
			feature, hook, _ := strings.Cut(strings.TrimSuffix(h, " (active)"), ": ")
			active[feature] = hook
			t.Logf("%-28s %s", feature+":", hook)
		case ok && strings.Contains(h, ": none not used: "):
			feature, why, _ := strings.Cut(h, ": none not used: ")
			t.Logf("%-28s none: %s", feature+":", why)
		}
	}
	for _, f := range []string{"state changes", "socket owner scan", "forks, execs", "renames", "exits", "connect port, accept owner", "blocking connects", "listener drop counters", "closed socket sweep", "retransmits", "resets"} {
		if active[f] == "" {
			t.Errorf("no active hook for %s:\n%s", f, stderr)
		}
	}
	kinds := dropHookRuns()
	if kinds[0] == "" {
		return // no expectations for this machine
	}
	if got := active["dropped clients"]; !strings.HasPrefix(got, kinds[0]+"/") && !strings.HasPrefix(got, kinds[0]+"+") {
		t.Errorf("per-packet drops via %q, want a %s hook", got, kinds[0])
	}
	for _, kind := range []string{"fentry", "kprobe", "tp_btf"} {
		if slices.Contains(kinds, kind) {
			continue
		}
		code, stdout, stderr := runTcptrace(t, nil, exe, "--hook-kind", kind, "--duration", "1ms")
		lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
		if code != 1 || stdout != "" || len(lines) != 1 || !strings.Contains(stderr, "no hook for dropped clients could be attached") {
			t.Errorf("--hook-kind %s, which this kernel lacks: exit %d, stderr %q; want exit 1 and one line naming the hook",
				kind, code, stderr)
		}
		t.Logf("--hook-kind %s: %s", kind, strings.TrimSpace(stderr))
	}
}
