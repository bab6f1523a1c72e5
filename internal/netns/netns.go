// Package netns sets up a fresh network namespace from inside it: loopback
// up, per-namespace sysctls (the test suite and the load generator use
// that), and reads another namespace's sysctls.
package netns

import (
	"fmt"
	"os"
	"strconv"
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
	return SysctlAt(fmt.Sprintf("/proc/%d/ns/net", pid), ino, name)
}

// SysctlAt is SysctlOf through the namespace file at path (a process's or a
// thread's /proc/.../ns/net, or a bind mount such as /run/netns/NAME).
func SysctlAt(path string, ino uint32, name string) (string, error) {
	var value string
	err := In(path, ino, func() error {
		b, err := os.ReadFile("/proc/sys/" + name)
		value = strings.TrimSpace(string(b))
		return err
	})
	return value, err
}

// In runs fn on a thread of its own in the network namespace with inode ino,
// entered through the namespace file at path; the thread ends with fn (so no
// goroutine runs in that namespace after it). There /proc/thread-self/net
// is the namespace's (/proc/self/net is the main thread's). In tcptrace's
// own namespace fn runs as it is: entering needs CAP_SYS_ADMIN, which
// tcptrace with CAP_BPF and CAP_PERFMON alone lacks.
func In(path string, ino uint32, fn func() error) error {
	var self unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &self) == nil && uint32(self.Ino) == ino {
		return fn()
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if uint32(st.Ino) != ino {
		return fmt.Errorf("%s is no longer network namespace %d: %w", path, ino, os.ErrNotExist)
	}
	osthread.Alone(func() {
		if err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			err = fmt.Errorf("enter network namespace %d: %w", ino, err)
			return
		}
		err = fn()
	})
	return err
}

// All finds a way into every network namespace: its inode, and a bind mount
// of it under /run/netns, else a process of it, else a thread of it (as
// Find); each namespace once. It stats every process and thread: not for a
// hot path.
func All() map[uint32]string {
	ways := map[uint32]string{}
	add := func(path string) {
		var st unix.Stat_t
		if unix.Stat(path, &st) == nil {
			if _, ok := ways[uint32(st.Ino)]; !ok {
				ways[uint32(st.Ino)] = path
			}
		}
	}
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			add("/run/netns/" + e.Name())
		}
	}
	ents, _ := os.ReadDir("/proc")
	var pids []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			add("/proc/" + e.Name() + "/ns/net")
			pids = append(pids, e.Name())
		}
	}
	for _, pid := range pids {
		tasks, _ := os.ReadDir("/proc/" + pid + "/task")
		for _, task := range tasks {
			add("/proc/" + pid + "/task/" + task.Name() + "/ns/net")
		}
	}
	return ways
}

// Find finds a way into the network namespace with inode ino, for SysctlAt:
// a bind mount of it under /run/netns (ip netns), a process of it, or a
// thread of it (a namespace can be held by one thread alone); "" if none.
// It stats every process and thread (All): not for a hot path.
func Find(ino uint32) string {
	return All()[ino]
}
