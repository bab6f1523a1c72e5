// Package e2e holds tcptrace's integration tests: real BPF objects on the
// running kernel, real TCP connections, each test in its own network
// namespace, checked against the kernel's own view.
//
// The test binary plays every part: run with TCPTRACE_E2E_ROLE set it becomes
// tcptrace itself or a workload process, so one static binary carries the
// whole suite into a VM.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/tcptrace/tcptrace/internal/cli"
)

const roleEnv = "TCPTRACE_E2E_ROLE"

func TestMain(m *testing.M) {
	if os.Getpid() == 1 {
		os.Exit(vmInit(m)) // inside a `make vmtest` guest
	}
	switch role := os.Getenv(roleEnv); role {
	case "":
		os.Exit(m.Run())
	case "tcptrace":
		// Exactly what cmd/tcptrace does.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(cli.ExitCode(err, os.Stderr))
	default:
		if err := runWorkload(role, os.Args[1:]); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", role, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// needRoot skips without privileges, except under CI=true where a test that
// cannot run is a failure, not a pass.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil {
			return
		}
		unavailable(t, "kernel BTF (/sys/kernel/btf/vmlinux) is missing")
		return
	}
	unavailable(t, "needs root")
}

func unavailable(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("cannot run under CI: %s", why)
	}
	t.Skip(why)
}
