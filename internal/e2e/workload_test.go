package e2e

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// runWorkload is the body of a workload process (TCPTRACE_E2E_ROLE=server or
// client). It reports progress as lines on stdout and, with -wait, waits for a
// "go" line on stdin first so a tracer can be started knowing its PID.
func runWorkload(role string, args []string) error {
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	network := fs.String("net", "tcp4", "tcp4 or tcp6")
	addr := fs.String("addr", "", "address to listen on or connect to")
	wait := fs.Bool("wait", false, "wait for a go line on stdin")
	count := fs.Int("n", 1, "connections (storm)")
	hold := fs.Bool("hold", false, "wait for a close line on stdin before closing the connection; leaker: for an accept line before accepting")
	forkChild := fs.Bool("fork", false, "server: fork after accept; the child keeps the socket, the parent closes its copy")
	execProg := fs.String("exec", "", "server: after accept, run this program with the socket as stdin and stdout; close our copy")
	become := fs.String("become", "", "server: after accept, exec this program in place of ours (no fork) with the socket as stdin and stdout")
	rename := fs.String("rename", "", "server: after accept, take this process name (as prctl(PR_SET_NAME) on the main thread)")
	closeThread := fs.String("close-thread", "", "client: close from a thread of this name (prctl(PR_SET_NAME) on that thread alone)")
	serverFirst := fs.Bool("server-first", false, "storm: the server closes first")
	clients := fs.Int("clients", 1, "storm: connections under way at once (above 1: the server closes first)")
	backlog := fs.Int("backlog", 1, "backlog1: the listen backlog")
	deferredN := fs.Int("deferred", 3, "overflow: clients whose final ACK is held back")
	unixPath := fs.String("unix", "", "passer, acceptor: the unix socket the listener is passed over")
	if err := fs.Parse(args); err != nil {
		return err
	}
	in := bufio.NewReader(os.Stdin)
	if *wait {
		if line, err := in.ReadString('\n'); err != nil || strings.TrimSpace(line) != "go" {
			return fmt.Errorf("waiting for go: %q, %v", line, err)
		}
	}
	switch role {
	case "backlog1":
		// Listeners with backlog 1 that never accept: one per address of
		// -addr (comma-separated), or -n on one address with SO_REUSEPORT.
		addrs := strings.Split(*addr, ",")
		for len(addrs) < *count {
			addrs = append(addrs, addrs[0])
		}
		var fds []int
		for _, a := range addrs {
			fd, err := listenBacklog(a, *backlog, *count > 1)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
		}
		fmt.Println("listening")
		waitLine(in, "close")
		for _, fd := range fds {
			syscall.Close(fd)
		}
		fmt.Println("closed")
		waitLine(in, "exit") // stay, so the test can read this namespace's counters
		return nil
	case "overflow":
		return runOverflow(*addr, *count, *deferredN)
	case "synburst":
		return runSynBurst(*addr, *count)
	case "leaker":
		return runLeaker(in, *network, *addr, *count, *hold)
	case "clients":
		for i := 0; i < *count; i++ {
			c, err := net.Dial(*network, *addr)
			if err != nil {
				return err
			}
			c.Close()
		}
		fmt.Println("done")
		return nil
	case "churn":
		return runChurn(in, *network, *addr, *clients)
	case "timewait":
		return runTimeWait(in, *addr, *count)
	case "closeerr":
		return runCloseErrors(in, *addr)
	case "exhaust":
		return runExhaust(in, *addr)
	case "deadpeer":
		return runDeadPeer(in, *addr)
	case "resets":
		return runResets(in, *addr)
	case "storm":
		if *clients > 1 {
			return runParallelStorm(*network, *addr, *count, *clients)
		}
		return runStorm(*network, *addr, *count, *serverFirst)
	case "server":
		// Listen, accept one connection, wait for the peer to close, close.
		ln, err := net.Listen(*network, *addr)
		if err != nil {
			return err
		}
		fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		fmt.Println("accepted")
		switch {
		case *forkChild:
			pid, err := forkHolding()
			if err != nil {
				return err
			}
			c.Close() // the child's copy keeps the socket open
			ln.Close()
			fmt.Printf("forked %d\n", pid)
			return nil
		case *execProg != "":
			f, err := c.(*net.TCPConn).File()
			if err != nil {
				return err
			}
			cmd := exec.Command(*execProg, "3600")
			cmd.Stdin, cmd.Stdout = f, f
			if err := cmd.Start(); err != nil {
				return err
			}
			f.Close()
			c.Close()
			ln.Close()
			fmt.Printf("forked %d\n", cmd.Process.Pid)
			return nil
		case *become != "":
			f, err := c.(*net.TCPConn).File()
			if err != nil {
				return err
			}
			fmt.Printf("becoming %d\n", os.Getpid())
			// dup3 without O_CLOEXEC: the copies on 0 and 1 outlive the exec.
			for _, to := range []int{0, 1} {
				if err := syscall.Dup3(int(f.Fd()), to, 0); err != nil {
					return err
				}
			}
			return syscall.Exec(*become, []string{*become, "3600"}, os.Environ())
		case *rename != "":
			// /proc/self is the main thread's, whichever thread writes.
			if err := os.WriteFile("/proc/self/comm", []byte(*rename), 0); err != nil {
				return err
			}
			fmt.Printf("renamed %d\n", os.Getpid())
		}
		if _, err := io.Copy(io.Discard, c); err != nil {
			return err
		}
		if *hold {
			fmt.Println("eof")
			waitLine(in, "close")
		}
		c.Close()
		ln.Close()
		fmt.Println("closed")
	case "passer":
		return runPasser(in, *network, *addr, *unixPath)
	case "acceptor":
		return runAcceptor(in, *unixPath)
	case "client":
		// Connect and close first, so the server side sees CLOSE_WAIT.
		c, err := net.Dial(*network, *addr)
		if err != nil {
			return err
		}
		fmt.Printf("connected %d\n", c.LocalAddr().(*net.TCPAddr).Port)
		if *hold {
			waitLine(in, "close")
		}
		if *closeThread != "" {
			return closeOnNamedThread(c, *closeThread)
		}
		c.Close()
		fmt.Println("closed")
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	return nil
}

// closeOnNamedThread closes c from a thread that takes name first (not the
// main thread: the process keeps its name) and says "closed TID".
func closeOnNamedThread(c net.Conn, name string) error {
	return onOtherThread(func() error {
		b := append([]byte(name), 0)
		if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0, 0, 0); err != nil {
			return fmt.Errorf("close-thread: prctl(PR_SET_NAME): %w", err)
		}
		err := c.Close()
		fmt.Printf("closed %d\n", unix.Gettid())
		return err
	})
}

// onOtherThread runs fn on a thread of its own, not the main thread, locked
// for good: a thread fn renames exits with it.
func onOtherThread(fn func() error) error {
	var try func(out chan<- error)
	try = func(out chan<- error) {
		runtime.LockOSThread()
		if unix.Gettid() == os.Getpid() {
			// The main thread: held until another try is done, which so
			// runs elsewhere.
			inner := make(chan error)
			go try(inner)
			err := <-inner
			runtime.UnlockOSThread()
			out <- err
			return
		}
		out <- fn()
	}
	res := make(chan error)
	go try(res)
	return <-res
}

// runPasser listens and hands the listener to the acceptor over a unix
// socket (SCM_RIGHTS), keeping its own copy, as a prefork master does.
func runPasser(in *bufio.Reader, network, addr, path string) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		return err
	}
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	if _, _, err := uc.WriteMsgUnix([]byte("ln"), syscall.UnixRights(int(f.Fd())), nil); err != nil {
		return err
	}
	uc.Close()
	f.Close()
	fmt.Println("passed")
	waitLine(in, "close")
	ln.Close()
	fmt.Println("closed")
	return nil
}

// runAcceptor takes a listener passed over a unix socket, accepts one
// connection on it and holds it until told to close.
func runAcceptor(in *bufio.Reader, path string) error {
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return err
	}
	fmt.Println("ready")
	uc, err := ul.AcceptUnix()
	if err != nil {
		return err
	}
	oob := make([]byte, syscall.CmsgSpace(4))
	_, oobn, _, _, err := uc.ReadMsgUnix(make([]byte, 8), oob)
	if err != nil {
		return err
	}
	uc.Close()
	ul.Close()
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return fmt.Errorf("no listener passed: %d messages, %v", len(msgs), err)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return fmt.Errorf("no listener passed: %v, %v", fds, err)
	}
	f := os.NewFile(uintptr(fds[0]), "listener")
	ln, err := net.FileListener(f)
	if err != nil {
		return err
	}
	f.Close()
	c, err := ln.Accept()
	if err != nil {
		return err
	}
	fmt.Println("accepted")
	if _, err := io.Copy(io.Discard, c); err != nil {
		return err
	}
	fmt.Println("eof")
	waitLine(in, "close")
	c.Close()
	ln.Close()
	fmt.Println("closed")
	return nil
}

func waitLine(in *bufio.Reader, want string) {
	line, err := in.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != want {
		fmt.Fprintf(os.Stderr, "waiting for %q: got %q, %v\n", want, line, err)
		os.Exit(1)
	}
}

// forkHolding forks without exec. The child inherits every descriptor and
// only ever makes raw system calls (the Go runtime cannot run in a forked
// child), pausing until it is killed.
func forkHolding() (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pid, _, errno := syscall.RawSyscall6(syscall.SYS_CLONE, uintptr(syscall.SIGCHLD), 0, 0, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	if pid == 0 {
		// Let go of the test's pipes so it sees the parent's output end.
		for fd := uintptr(0); fd < 3; fd++ {
			syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
		}
		for {
			syscall.RawSyscall(syscall.SYS_PAUSE, 0, 0, 0)
		}
	}
	return int(pid), nil
}

// proc is a workload process started by a test.
type proc struct {
	t     *testing.T
	role  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan error
	ended bool // told to exit and waited for (exit)
}

const waitLong = 60 * time.Second // generous: the suite also runs in emulated VMs

func startRole(t *testing.T, ns *netNS, role string, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, role: role, lines: make(chan string, 16), done: make(chan error, 1)}
	p.cmd = exec.Command(exe, args...)
	p.cmd.Env = append(os.Environ(), roleEnv+"="+role)
	p.cmd.Stderr = os.Stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.start(p.cmd); err != nil {
		t.Fatalf("start %s: %v", role, err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, line+"\n"); err != nil {
		p.t.Fatalf("%s: write stdin: %v", p.role, err)
	}
}

// expect waits for the next line and checks its first word; it returns the rest.
func (p *proc) expect(word string) string {
	p.t.Helper()
	return p.expectWithin(word, waitLong)
}

// expectWithin is expect with a time limit of its own, for long workloads.
func (p *proc) expectWithin(word string, limit time.Duration) string {
	p.t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%s exited while waiting for %q: %v", p.role, word, <-p.done)
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != word {
			p.t.Fatalf("%s said %q, want %q", p.role, line, word)
		}
		return strings.TrimSpace(strings.TrimPrefix(line, word))
	case <-time.After(limit):
		p.t.Fatalf("%s: no %q within %v", p.role, word, limit)
	}
	return ""
}

// exit tells a role that waits for "exit" to end, and waits for it; once,
// so that a test can both defer it and call it where the order matters.
func (p *proc) exit() {
	p.t.Helper()
	if p.ended {
		return
	}
	p.ended = true
	p.send("exit")
	p.wait()
}

func (p *proc) wait() {
	p.t.Helper()
	for range p.lines {
	}
	select {
	case err := <-p.done:
		if err != nil {
			p.t.Fatalf("%s failed: %v", p.role, err)
		}
	case <-time.After(waitLong):
		p.t.Fatalf("%s did not exit", p.role)
	}
}

// pair is a server process and a client process making one connection.
type pair struct {
	server, client *proc
	host           string
	port           uint16
	clientPort     uint16
}

// startPair starts both processes, parked until run, so tracers can be started
// with their PIDs first.
func startPair(t *testing.T, ns *netNS, network, host string, port uint16) *pair {
	t.Helper()
	hp := net.JoinHostPort(host, strconv.Itoa(int(port)))
	return &pair{
		server: startRole(t, ns, "server", "-net", network, "-addr", hp, "-wait"),
		client: startRole(t, ns, "client", "-net", network, "-addr", hp, "-wait"),
		host:   host,
		port:   port,
	}
}

// run makes the connection and waits for both processes to finish.
func (p *pair) run(t *testing.T) {
	t.Helper()
	p.server.send("go")
	if got := p.server.expect("listening"); got != strconv.Itoa(int(p.port)) {
		t.Fatalf("server listens on %s, want %d", got, p.port)
	}
	p.client.send("go")
	n, err := strconv.ParseUint(p.client.expect("connected"), 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	p.clientPort = uint16(n)
	p.client.expect("closed")
	p.server.expect("accepted")
	p.server.expect("closed")
	p.client.wait()
	p.server.wait()
}

// deferredConnect starts a non-blocking connect whose final ACK the kernel
// holds back ~200 ms (TCP_DEFER_ACCEPT on a client socket), so its handshake
// sits in the listener's SYN queue meanwhile.
func deferredConnect(sa syscall.Sockaddr, deferACK bool) (int, error) {
	fd, err := syscall.Socket(familyOf(sa), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, err
	}
	if deferACK {
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, 1); err != nil {
			return -1, err
		}
	}
	if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS {
		return -1, err
	}
	return fd, nil
}

// localPorts lists the sockets' local ports, comma-separated.
func localPorts(fds []int) string {
	var ports []string
	for _, fd := range fds {
		switch sa, _ := syscall.Getsockname(fd); sa := sa.(type) {
		case *syscall.SockaddrInet4:
			ports = append(ports, strconv.Itoa(sa.Port))
		case *syscall.SockaddrInet6:
			ports = append(ports, strconv.Itoa(sa.Port))
		}
	}
	return strings.Join(ports, ",")
}

// sockaddr is addr ("127.0.0.1:7070" or "[::1]:7070") for the socket calls.
func sockaddr(addr string) (syscall.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	if ap.Addr().Is4() {
		return &syscall.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}, nil
	}
	return &syscall.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
}

func familyOf(sa syscall.Sockaddr) int {
	if _, ok := sa.(*syscall.SockaddrInet6); ok {
		return syscall.AF_INET6
	}
	return syscall.AF_INET
}

// listenBacklog listens on addr with the given backlog, SO_REUSEPORT set if
// reusePort.
func listenBacklog(addr string, backlog int, reusePort bool) (int, error) {
	sa, err := sockaddr(addr)
	if err != nil {
		return -1, err
	}
	fd, err := syscall.Socket(familyOf(sa), syscall.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	if reusePort {
		if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return -1, err
		}
	}
	if err := syscall.Bind(fd, sa); err != nil {
		return -1, fmt.Errorf("bind %s: %w", addr, err)
	}
	return fd, syscall.Listen(fd, backlog)
}

// runSynBurst fills a listener's SYN queue: n handshakes at once whose final
// ACKs are held back, so with syncookies off the SYNs past the queue's
// capacity are dropped; it holds them through the SYN retry at 1 s.
func runSynBurst(addr string, n int) error {
	sa, err := sockaddr(addr)
	if err != nil {
		return err
	}
	var fds []int
	for i := 0; i < n; i++ {
		fd, err := deferredConnect(sa, true)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	fmt.Printf("clients %s\n", localPorts(fds))
	time.Sleep(1500 * time.Millisecond)
	for _, fd := range fds {
		syscall.Close(fd)
	}
	fmt.Println("done")
	return nil
}

// runOverflow overflows a listener with backlog 1: a few clients whose final
// ACK the kernel delays (TCP_DEFER_ACCEPT on a client socket holds it back
// ~200 ms) get their SYNs in first; two plain connections then fill the
// accept queue, so the delayed ACKs overflow it (TCP_LISTEN_OVERFLOW); then n
// more SYNs are dropped on arrival, and retried, for a few seconds.
func runOverflow(addr string, n, nDeferred int) error {
	sa, err := sockaddr(addr)
	if err != nil {
		return err
	}
	connect := func(deferACK bool) (int, error) { return deferredConnect(sa, deferACK) }
	var fds, deferred []int
	for i := 0; i < nDeferred; i++ {
		fd, err := connect(true)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
		deferred = append(deferred, fd)
	}
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
	}
	for i := 0; i < n; i++ {
		fd, err := connect(false)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	fmt.Printf("clients %s\n", localPorts(fds))
	fmt.Printf("deferred %s\n", localPorts(deferred))
	time.Sleep(3500 * time.Millisecond) // SYN and SYN-ACK retries at 1 s and 3 s
	for _, fd := range fds {
		syscall.Close(fd)
	}
	fmt.Println("done")
	return nil
}

// runLeaker accepts n connections and, like a leaking server, never closes
// them: once each peer has closed, all n sit in CLOSE_WAIT. Commands on
// stdin: "close K" closes K of them, "fork" hands them all to a forked child,
// "exec PROG" hands one to PROG as its stdin and stdout.
func runLeaker(in *bufio.Reader, network, addr string, n int, queue bool) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	if queue { // the connections wait in the accept queue till told
		waitLine(in, "accept")
	}
	var held []net.Conn
	for len(held) < n {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		held = append(held, c)
	}
	for _, c := range held {
		if _, err := io.Copy(io.Discard, c); err != nil { // EOF: the peer closed
			return err
		}
	}
	fmt.Printf("held %d\n", len(held))
	for {
		line, err := in.ReadString('\n')
		if err != nil {
			return nil
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "close":
			k, _ := strconv.Atoi(f[1])
			for _, c := range held[:k] {
				c.Close()
			}
			held = held[k:]
			fmt.Printf("holding %d\n", len(held))
		case len(f) == 1 && f[0] == "fork":
			pid, err := forkHolding()
			if err != nil {
				return err
			}
			for _, c := range held {
				c.Close()
			}
			held = nil
			fmt.Printf("forked %d\n", pid)
		case len(f) == 2 && f[0] == "exec":
			sf, err := held[0].(*net.TCPConn).File()
			if err != nil {
				return err
			}
			cmd := exec.Command(f[1], "3600")
			cmd.Stdin, cmd.Stdout = sf, sf
			if err := cmd.Start(); err != nil {
				return err
			}
			sf.Close()
			held[0].Close()
			held = held[1:]
			fmt.Printf("forked %d\n", cmd.Process.Pid)
		default:
			return fmt.Errorf("unknown command %q", line)
		}
	}
}

// runStorm makes n connections to itself one after another, each closed by
// the client first: 10 state changes per connection plus 2 for the listener.
func runStorm(network, addr string, n int, serverFirst bool) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		c, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			return err
		}
		s, err := ln.Accept()
		if err != nil {
			return err
		}
		first, second := c, s
		if serverFirst {
			first, second = s, c
		}
		first.Close()
		if _, err := io.Copy(io.Discard, second); err != nil {
			return err
		}
		second.Close()
	}
	ln.Close()
	fmt.Println("done")
	return nil
}

// runChurn makes short connections from clients goroutines (the server
// closes first) until a stop line; "started" once connections flow, "done N"
// at the end.
func runChurn(in *bufio.Reader, network, addr string, clients int) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed at the end
			}
			c.Close()
		}
	}()
	var stop atomic.Bool
	var made atomic.Int64
	errs := make(chan error, clients)
	for range clients {
		go func() {
			for !stop.Load() {
				if err := dialUntilClosed(network, ln.Addr().String()); err != nil {
					errs <- err
					return
				}
				made.Add(1)
			}
			errs <- nil
		}()
	}
	for made.Load() < int64(clients) {
		select {
		case err := <-errs: // a client failed: stop is not set yet
			return err
		case <-time.After(time.Millisecond):
		}
	}
	fmt.Println("started")
	waitLine(in, "stop")
	stop.Store(true)
	for range clients {
		if err := <-errs; err != nil {
			return err
		}
	}
	ln.Close()
	fmt.Printf("done %d\n", made.Load())
	return nil
}

// dialUntilClosed makes one short connection: the server closes first.
func dialUntilClosed(network, addr string) error {
	c, err := net.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = io.Copy(io.Discard, c)
	return err
}

// runParallelStorm makes n short connections from clients goroutines at once;
// the server closes each as it accepts it, the client then closes too (10
// state changes per connection).
func runParallelStorm(network, addr string, n, clients int) error {
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	accepted := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err
				return
			}
			c.Close()
		}
		accepted <- nil
	}()
	errs := make(chan error, clients)
	for k := 0; k < clients; k++ {
		go func() {
			for i := k; i < n; i += clients {
				if err := dialUntilClosed(network, ln.Addr().String()); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for k := 0; k < clients; k++ {
		if err := <-errs; err != nil {
			return err
		}
	}
	if err := <-accepted; err != nil {
		return err
	}
	ln.Close()
	fmt.Println("done")
	return nil
}
