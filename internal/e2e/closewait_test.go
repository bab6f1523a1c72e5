package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cwProcess is one JSON object of `tcptrace closewait -o json`.
type cwProcess struct {
	Type          string   `json:"type"`
	Time          string   `json:"time"`
	PID           int      `json:"pid"`
	Comm          string   `json:"comm"`
	Count         int      `json:"count"`
	Oldest        *float64 `json:"oldest_seconds"`
	OldestAtLeast *float64 `json:"oldest_at_least_seconds"`
	Sockets       []struct {
		LAddr      string   `json:"laddr"`
		LPort      uint16   `json:"lport"`
		RAddr      string   `json:"raddr"`
		RPort      uint16   `json:"rport"`
		Age        *float64 `json:"age_seconds"`
		AgeAtLeast *float64 `json:"age_at_least_seconds"`
	} `json:"sockets"`
}

// closeWaitOnce runs `tcptrace closewait --once -o json` and returns its rows by PID.
func closeWaitOnce(t *testing.T, args ...string) map[int]cwProcess {
	t.Helper()
	exe, _ := os.Executable()
	code, stdout, stderr := runTcptrace(t, nil, exe, append([]string{"closewait", "--once", "-o", "json"}, args...)...)
	if code != 0 {
		t.Fatalf("closewait --once: exit %d: %s", code, stderr)
	}
	rows := map[int]cwProcess{}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if line == "" {
			continue
		}
		var p cwProcess
		if err := json.Unmarshal([]byte(line), &p); err != nil || p.Type != "close_wait" {
			t.Fatalf("bad line %q: %v", line, err)
		}
		rows[p.PID] = p
	}
	return rows
}

// closeWaitHeld is the kernel's own count, as `ss -tanp state close-wait`
// makes it: CLOSE_WAIT sockets in pid's network namespace (/proc/PID/net/tcp)
// whose inode is one of pid's descriptors.
func closeWaitHeld(t *testing.T, pid int) int {
	t.Helper()
	inodes := map[string]bool{}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, f := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) > 9 && fields[3] == "08" && inodes[fields[9]] {
				n++
			}
		}
		fh.Close()
	}
	return n
}

func startLeak(t *testing.T, ns *netNS, port, n int) *proc {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	lk := startRole(t, ns, "leaker", "-addr", addr, "-n", strconv.Itoa(n))
	lk.expect("listening")
	cl := startRole(t, ns, "clients", "-addr", addr, "-n", strconv.Itoa(n))
	cl.expect("done")
	cl.wait()
	if got := lk.expect("held"); got != strconv.Itoa(n) {
		t.Fatalf("leaker holds %s, want %d", got, n)
	}
	return lk
}

// TestCloseWaitOlderLeak: a server holds N CLOSE_WAIT sockets made before
// tcptrace starts; --once names it with exactly N, as the kernel counts them.
func TestCloseWaitOlderLeak(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	const n = 50
	lk := startLeak(t, ns, 7050, n)
	truth := closeWaitHeld(t, lk.pid())
	if truth != n {
		t.Fatalf("kernel says the leaker holds %d CLOSE_WAIT sockets, want %d", truth, n)
	}
	rows := closeWaitOnce(t)
	row, ok := rows[lk.pid()]
	if !ok || row.Count != truth || len(row.Sockets) != truth {
		t.Fatalf("leaker %d: row %+v, want count %d", lk.pid(), row, truth)
	}
	for _, s := range row.Sockets {
		// Older than tcptrace: no exact age, only a lower bound.
		if s.LPort != 7050 || s.LAddr != "127.0.0.1" || s.Age != nil || s.AgeAtLeast == nil || *s.AgeAtLeast < 0 {
			t.Fatalf("socket %+v", s)
		}
	}
	if row.Oldest != nil || row.OldestAtLeast == nil {
		t.Fatalf("oldest: %v / %v, want null and a lower bound", row.Oldest, row.OldestAtLeast)
	}
	// Filters: another port finds nothing of ours; the leaker's own port all.
	if _, ok := closeWaitOnce(t, "--port", "7051")[lk.pid()]; ok {
		t.Error("--port 7051 kept the leaker")
	}
	if r := closeWaitOnce(t, "--pid", strconv.Itoa(lk.pid()), "--port", "7050"); len(r) != 1 || r[lk.pid()].Count != n {
		t.Errorf("--pid/--port: %+v", r)
	}
	if r := closeWaitOnce(t, "--min-age", "1h", "--pid", strconv.Itoa(lk.pid())); len(r) != 0 {
		t.Errorf("--min-age 1h kept sockets a few seconds old: %+v", r)
	}
}

// TestCloseWaitHeldByChildren: sockets inherited by a child are pinned on
// the process that holds them now.
func TestCloseWaitHeldByChildren(t *testing.T) {
	needRoot(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		unavailable(t, "no sleep program on PATH")
	}
	ns := newNetNS(t)
	const n = 10
	lk := startLeak(t, ns, 7052, n)

	lk.send("exec " + sleep)
	execd, _ := strconv.Atoi(lk.expect("forked"))
	killLater(t, execd)
	// "forked" comes once the exec closed its close-on-exec pipe, which may
	// be before the exec stores the new name.
	waitComm(t, execd, "sleep")
	rows := closeWaitOnce(t)
	if rows[execd].Count != 1 || rows[execd].Comm != "sleep" || rows[lk.pid()].Count != n-1 {
		t.Fatalf("after exec: sleep %+v, leaker %+v", rows[execd], rows[lk.pid()])
	}

	lk.send("fork")
	child, _ := strconv.Atoi(lk.expect("forked"))
	killLater(t, child)
	rows = closeWaitOnce(t)
	if _, ok := rows[lk.pid()]; ok {
		t.Errorf("the parent closed its copies but still shows: %+v", rows[lk.pid()])
	}
	if rows[child].Count != n-1 || closeWaitHeld(t, child) != n-1 {
		t.Fatalf("forked child %d: %+v, kernel says %d", child, rows[child], closeWaitHeld(t, child))
	}
}

// TestCloseWaitLive: the table refreshes; sockets seen entering CLOSE_WAIT
// have exact ages that grow; when the leaker closes some, the count drops.
func TestCloseWaitLive(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	// Leak only once the tracer is attached, so every entry is dated.
	rows := startRows[cwProcess](t, "watching CLOSE_WAIT", "closewait", "-o", "json", "--interval", "300ms")
	nextOf := func(pid int, want func(cwProcess) bool) cwProcess {
		t.Helper()
		deadline := time.After(waitLong)
		for {
			select {
			case p, ok := <-rows:
				if !ok {
					t.Fatal("closewait exited")
				}
				if p.PID == pid && want(p) {
					return p
				}
			case <-deadline:
				t.Fatal("no matching refresh")
			}
		}
	}
	// A marker process shows in every refresh, so the test knows one passed.
	marker := startLeak(t, ns, 7054, 1)
	// A refresh shown after since, and the one after it: that one's scan
	// was surely taken after since.
	refreshAfter := func(since time.Time) {
		t.Helper()
		shown := func(p cwProcess) time.Time { at, _ := time.Parse(time.RFC3339Nano, p.Time); return at }
		a := nextOf(marker.pid(), func(p cwProcess) bool { return shown(p).After(since) })
		nextOf(marker.pid(), func(p cwProcess) bool { return shown(p).After(shown(a)) })
	}
	// The leaker's connections enter CLOSE_WAIT in its accept queue, where no
	// process holds them, and wait there across a refresh before the accepts:
	// their ages must still be exact.
	const n = 20
	addr := "127.0.0.1:7053"
	lk := startRole(t, ns, "leaker", "-addr", addr, "-n", strconv.Itoa(n), "-hold")
	lk.expect("listening")
	cl := startRole(t, ns, "clients", "-addr", addr, "-n", strconv.Itoa(n))
	cl.expect("done")
	cl.wait()
	refreshAfter(time.Now())
	lk.send("accept")
	if got := lk.expect("held"); got != strconv.Itoa(n) {
		t.Fatalf("leaker holds %s, want %d", got, n)
	}
	next := func(want func(cwProcess) bool) cwProcess { t.Helper(); return nextOf(lk.pid(), want) }
	first := next(func(p cwProcess) bool { return p.Count == n })
	for _, s := range first.Sockets {
		if s.Age == nil {
			t.Fatalf("a socket seen entering CLOSE_WAIT has no exact age: %+v", first)
		}
	}
	later := next(func(p cwProcess) bool { return p.Time != first.Time })
	if later.Oldest == nil || first.Oldest == nil || *later.Oldest <= *first.Oldest {
		t.Fatalf("oldest age did not grow: %v -> %v", first.Oldest, later.Oldest)
	}
	lk.send("close 5")
	lk.expect("holding")
	next(func(p cwProcess) bool { return p.Count == n-5 })
}

// TestCloseWaitAlert: the stream reports each socket that sits in CLOSE_WAIT
// for the alert's duration, once, naming its owner; one closed in time is
// not reported; sockets already stuck at start are reported with a lower bound.
func TestCloseWaitAlert(t *testing.T) {
	needRoot(t)
	ns := newNetNS(t)
	older := startLeak(t, ns, 7060, 2)
	tr := startTracer(t, "--close-wait-alert", "1500ms", "--state", "LISTEN")
	newer := startLeak(t, ns, 7061, 3)
	newer.send("close 1")
	newer.expect("holding")

	deadline := time.Now().Add(waitLong)
	var stuck []record
	for len(stuck) < 4 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		stuck = nil
		tr.mu.Lock()
		for _, r := range tr.recs {
			if r.Type == "close_wait_stuck" {
				stuck = append(stuck, r)
			}
		}
		tr.mu.Unlock()
	}
	time.Sleep(300 * time.Millisecond) // room for a wrong fifth alert
	tr.stopClean()
	byPort := map[uint16][]record{}
	tr.mu.Lock()
	for _, r := range tr.recs {
		switch r.Type {
		case "close_wait_stuck":
			byPort[r.LPort] = append(byPort[r.LPort], r)
		case "state":
			if r.NewState != "LISTEN" {
				t.Errorf("--state LISTEN let through %s", r)
			}
		}
	}
	tr.mu.Unlock()
	if len(byPort[7060]) != 2 || len(byPort[7061]) != 2 {
		t.Fatalf("alerts: %d for the older leak (want 2), %d for the newer (want 2, one was closed in time):\n%s%s",
			len(byPort[7060]), len(byPort[7061]), dump(byPort[7060]), dump(byPort[7061]))
	}
	for _, r := range byPort[7060] {
		if r.PID != older.pid() || r.AgeSeconds != nil || r.AgeAtLeast == nil {
			t.Errorf("older leak alert: %s", r)
		}
	}
	for _, r := range byPort[7061] {
		if r.PID != newer.pid() || r.AgeSeconds == nil || *r.AgeSeconds < 1.5 {
			t.Errorf("newer leak alert: %s", r)
		}
	}
}
