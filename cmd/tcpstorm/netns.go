package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/netns"
)

// inNetNSEnv marks the copy of tcpstorm that runs inside the namespace.
const inNetNSEnv = "TCPSTORM_IN_NETNS"

// inFreshNetNS reports whether this process is the re-executed copy.
func inFreshNetNS() bool { return os.Getenv(inNetNSEnv) == "1" }

// reexecInNetNS runs this program again with the same arguments in a fresh
// network namespace and waits for it. A Go process cannot move all its
// threads into a namespace, so a child cloned with CLONE_NEWNET is the way.
// The namespace has no name: it goes away with the last process in it.
// SIGINT and SIGTERM are passed on, so killing this process stops the child.
func reexecInNetNS(args []string) error {
	cmd := exec.Command(self(), args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), inNetNSEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL, // never outlive us, whatever kills us
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start in a new network namespace (needs root): %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode()) // the child already said why
			}
			return err
		}
	}
}

// setupNetNS brings up loopback in the fresh namespace and widens the
// ephemeral port range (a per-namespace sysctl), so large runs do not run
// out of ports; ports below 10000 stay free for the servers.
func setupNetNS() error {
	if err := netns.LinkUp("lo"); err != nil {
		return err
	}
	if err := netns.Sysctl("net/ipv4/ip_local_port_range", "10000 65535"); err != nil {
		return err
	}
	// A full accept queue drops SYNs, and each drop costs the client a 1 s
	// retransmission: let the queue hold a whole storm.
	return netns.Sysctl("net/core/somaxconn", "65535")
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile("/proc/sys/" + name)
	return strings.TrimSpace(string(b)), err
}

// sockaddr parses an IPv4 "addr:port".
func sockaddr(s string) (*unix.SockaddrInet4, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil || !ap.Addr().Is4() {
		return nil, fmt.Errorf("bad address %q: want IPv4 addr:port", s)
	}
	return &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}, nil
}

// listenTCP opens a plain TCP listener (not Go's net package: Go 1.24+
// listens with MPTCP by default, which would change the state changes).
func listenTCP(sa *unix.SockaddrInet4, backlog int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// connectClose makes one short connection: connect, then close at once.
func connectClose(sa *unix.SockaddrInet4) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, sa)
	if err == unix.EINTR {
		// The handshake goes on without us: wait for it to finish.
		err = waitConnected(fd)
	}
	return err
}

func waitConnected(fd int) error {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		if _, err := unix.Poll(pfd, -1); err != unix.EINTR {
			break
		}
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soerr != 0 {
		return unix.Errno(soerr)
	}
	return nil
}

// countCloseWait counts the sockets in CLOSE_WAIT in this process's network
// namespace, from /proc/net/tcp and tcp6 (state 08).
func countCloseWait() (int, error) {
	n := 0
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) > 3 && fields[3] == "08" {
				n++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// counter reads one counter of this namespace from /proc/net/netstat or
// /proc/net/snmp, e.g. ("TcpExt", "ListenDrops") or ("Tcp", "RetransSegs");
// -1 if absent. Both files hold pairs of lines: names, then values.
func counter(group, name string) int64 {
	for _, file := range []string{"/proc/net/netstat", "/proc/net/snmp"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for i := 0; i+1 < len(lines); i += 2 {
			keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(keys) == 0 || keys[0] != group+":" || len(vals) != len(keys) {
				continue
			}
			for j, k := range keys {
				if k == name {
					n, _ := strconv.ParseInt(vals[j], 10, 64)
					return n
				}
			}
		}
	}
	return -1
}

// self is this program's path: re-executing it by that name (rather than
// /proc/self/exe) keeps the command name "tcpstorm" that tracers print.
func self() string {
	if p, err := os.Executable(); err == nil {
		return p
	}
	return "/proc/self/exe"
}
