package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// TestInOwnNamespace: in the caller's own namespace fn runs on the caller's
// thread, entering nothing (setns needs CAP_SYS_ADMIN); the namespace file
// need not even be openable.
func TestInOwnNamespace(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	ran := 0
	err := In("/nonexistent", uint32(st.Ino), func() error {
		ran = unix.Gettid()
		_, err := os.ReadFile("/proc/thread-self/net/tcp")
		return err
	})
	if err != nil || ran != tid {
		t.Fatalf("In(own namespace): ran on thread %d (caller %d), %v", ran, tid, err)
	}
}

// TestInGone: a way in that is gone, or leads elsewhere now, says so as
// os.ErrNotExist (a namespace whose process exited is skipped, not an error).
func TestInGone(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		ino  uint32
	}{{"/nonexistent", uint32(st.Ino) + 1}, {"/proc/self/ns/net", uint32(st.Ino) + 1}} {
		err := In(c.path, c.ino, func() error { return fmt.Errorf("ran") })
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("In(%s, %d): %v, want os.ErrNotExist", c.path, c.ino, err)
		}
	}
}
