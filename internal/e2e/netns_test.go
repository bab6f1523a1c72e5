package e2e

import (
	"fmt"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/netns"
	"github.com/tcptrace/tcptrace/internal/osthread"
)

// netNS is a fresh network namespace held by one locked OS thread. Processes
// started through it are forked from that thread and so live in the namespace;
// the test itself and tcptrace stay in the host namespace.
type netNS struct {
	ino  uint32 // the namespace's inode number, as BPF reports it
	reqs chan func()
}

func newNetNS(t *testing.T) *netNS {
	t.Helper()
	ns := &netNS{reqs: make(chan func())}
	errc := make(chan error, 1)
	// On a thread of its own that ends with it (never the main thread), so
	// the namespace cannot leak into other goroutines.
	go osthread.Alone(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
			return
		}
		if err := netns.LinkUp("lo"); err != nil {
			errc <- err
			return
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			errc <- err
			return
		}
		ns.ino = uint32(st.Ino)
		errc <- nil
		for f := range ns.reqs {
			f()
		}
	})
	if err := <-errc; err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	t.Cleanup(func() { close(ns.reqs) })
	return ns
}

// start starts cmd inside the namespace.
func (ns *netNS) start(cmd *exec.Cmd) error {
	errc := make(chan error)
	ns.reqs <- func() { errc <- cmd.Start() }
	return <-errc
}

// do runs f on the namespace's thread (sysctls, sockets).
func (ns *netNS) do(f func() error) error {
	errc := make(chan error)
	ns.reqs <- func() { errc <- f() }
	return <-errc
}

// sysctl writes a per-namespace sysctl such as net/ipv4/tcp_syncookies.
func (ns *netNS) sysctl(name, value string) error {
	return ns.do(func() error { return netns.Sysctl(name, value) })
}
