// Package netns sets up a fresh network namespace from inside it: loopback
// up, per-namespace sysctls (the test suite and the load generator use
// that), and reads another namespace's sysctls.
package netns

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/osthread"
)

// LinkUp brings interface name up in the calling thread's namespace.
func LinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS %s: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS %s: %w", name, err)
	}
	return nil
}

// Sysctl writes a sysctl such as net/ipv4/tcp_syncookies. Under /proc/sys/net
// it is the namespace of the thread that opens the file.
func Sysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	return nil
}

// SysctlOf reads a /proc/sys/net sysctl (such as net/ipv4/ip_local_port_range)
// of the network namespace with inode ino, entered through process pid's
// /proc/PID/ns/net on a thread of its own, which ends with the read (so no
// goroutine runs in that namespace after it).
func SysctlOf(pid int, ino uint32, name string) (string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return "", fmt.Errorf("open network namespace: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat /proc/%d/ns/net: %w", pid, err)
	}
	if uint32(st.Ino) != ino {
		return "", fmt.Errorf("process %d is no longer in network namespace %d", pid, ino)
	}
	var value string
	osthread.Alone(func() {
		if err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			err = fmt.Errorf("enter network namespace %d: %w", ino, err)
			return
		}
		var b []byte
		b, err = os.ReadFile("/proc/sys/" + name)
		value = strings.TrimSpace(string(b))
	})
	return value, err
}
