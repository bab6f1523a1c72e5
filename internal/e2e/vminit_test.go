package e2e

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The guest side of .ci/vmtest.sh. The test binary is the initramfs's /init;
// the script reads these lines from the serial console.
const (
	vmMarker    = "TCPTRACE-VMTEST-RESULT:" // PASS, or FAIL code=N
	vmInitLine  = "TCPTRACE-VMTEST-INIT:"   // vmInit started (the script checks TestMain is wired)
	vmFlagParam = "tcptrace."               // kernel parameter tcptrace.X=V becomes -test.X=V
)

// vmInit runs when the test binary is PID 1 inside a vmtest guest.
//
// It prepares the bare initramfs (mounts, lo, environment), then runs the suite
// in a child process, the same binary with -test.* flags, and acts as init for
// it: reaps every orphan, prints the result marker and powers off. The suite
// does not run in PID 1 itself because a panic on any goroutine other than the
// one calling m.Run, a -test.timeout alarm or an os.Exit in a test would end
// PID 1 without a marker (the kernel then panics); a child's death is always
// seen here. m is therefore not run in this process.
func vmInit(m *testing.M) (code int) {
	code = 1
	defer func() {
		if r := recover(); r != nil {
			fmt.Printf("\nvminit: panic: %v\n%s", r, debug.Stack())
			code = 1
		}
		if code == 0 {
			fmt.Printf("\n%s PASS\n", vmMarker)
		} else {
			fmt.Printf("\n%s FAIL code=%d\n", vmMarker, code)
		}
		vmPowerOff()
		// Still here: returning makes PID 1 exit, the kernel panics, and with
		// panic=-1 and QEMU's -no-reboot the VM ends anyway.
	}()

	fmt.Printf("%s pid %d\n", vmInitLine, os.Getpid())
	vmMounts()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		fmt.Printf("vminit: uname -r: %s\n", unix.ByteSliceToString(uts.Release[:]))
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
		fmt.Println("vminit: kernel BTF: /sys/kernel/btf/vmlinux present")
	} else {
		fmt.Printf("vminit: kernel BTF: %v\n", err)
	}
	if err := vmLinkUp("lo"); err != nil {
		fmt.Printf("vminit: lo: %v\n", err)
	} else {
		fmt.Println("vminit: lo up")
	}

	// Busybox applets live in /bin; the guest has no /etc, so nothing here
	// may need user or host lookups. CI=true makes unmet needs fail, not skip.
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	os.Setenv("HOME", "/")
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("CI", "true")

	args := []string{"/init", "-test.v=true"}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		fmt.Printf("vminit: %v\n", err)
	}
	for _, p := range vmSplitCmdline(string(cmdline)) {
		if name, val, ok := strings.Cut(p, "="); ok && strings.HasPrefix(name, vmFlagParam) {
			args = append(args, "-test."+strings.TrimPrefix(name, vmFlagParam)+"="+val)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		exe = "/init"
	}
	fmt.Printf("vminit: running %q\n", args)
	start := time.Now()
	pid, err := syscall.ForkExec(exe, args, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2},
	})
	if err != nil {
		fmt.Printf("vminit: start the suite: %v\n", err)
		return 1
	}
	code = vmReap(pid)
	fmt.Printf("vminit: suite exited with code %d after %v\n", code, time.Since(start).Round(time.Millisecond))
	return code
}

// vmMounts mounts what the tests need. tracefs stays unmounted: tcptrace
// mounts it itself and the tests check that it leaves it as found. debugfs
// stays unmounted too, as its tracing directory automounts tracefs.
func vmMounts() {
	for _, mt := range []struct{ fstype, dir string }{
		{"proc", "/proc"},
		{"sysfs", "/sys"},
		{"devtmpfs", "/dev"},
		{"bpf", "/sys/fs/bpf"},
		{"tmpfs", "/tmp"},
		{"tmpfs", "/run"},
	} {
		os.MkdirAll(mt.dir, 0o755) // fails harmlessly inside sysfs, where it exists
		if err := unix.Mount(mt.fstype, mt.dir, mt.fstype, 0, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("vminit: mount %s on %s: %v\n", mt.fstype, mt.dir, err)
		} else {
			fmt.Printf("vminit: mounted %s on %s\n", mt.fstype, mt.dir)
		}
	}
	os.Chmod("/tmp", 0o1777) // TestNeedsPrivilege runs a copy as nobody
}

// vmReap waits for every child (orphans are reparented to PID 1) until the
// suite itself exits, and returns its exit code.
func vmReap(suite int) int {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			fmt.Printf("vminit: wait: %v\n", err)
			return 1
		}
		if pid != suite {
			continue
		}
		switch {
		case ws.Exited():
			return ws.ExitStatus()
		case ws.Signaled():
			fmt.Printf("vminit: suite killed by signal %v\n", ws.Signal())
			return 128 + int(ws.Signal())
		}
	}
}

// vmSplitCmdline splits a kernel command line as the kernel does: on spaces,
// except inside double quotes, which are removed (tcptrace.run="a b").
func vmSplitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, have = !quoted, true
		case !quoted && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// vmLinkUp sets a network interface up (the guest has no ip command of its own
// for sure; busybox's may be missing).
func vmLinkUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// vmPowerOff ends the VM: power off, or reboot, which QEMU's -no-reboot also
// turns into an exit.
func vmPowerOff() {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Printf("vminit: power off: %v\n", err)
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	fmt.Printf("vminit: reboot: %v\n", err)
}
