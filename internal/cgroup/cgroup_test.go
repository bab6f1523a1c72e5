package cgroup

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func ino(t *testing.T, path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestPathsFromDirectoryInodes(t *testing.T) {
	root := t.TempDir()
	svc := filepath.Join(root, "system.slice", "redis.service")
	if err := os.MkdirAll(svc, 0o755); err != nil {
		t.Fatal(err)
	}
	n := NewNamesAt(root)
	if got := n.Path(ino(t, svc)); got != "/system.slice/redis.service" {
		t.Fatalf("got %q", got)
	}
	if got := n.Path(ino(t, root)); got != "/" {
		t.Fatalf("root: got %q", got)
	}
	// A new cgroup right after a walk is not found until the gap has passed.
	late := filepath.Join(root, "late.scope")
	os.Mkdir(late, 0o755)
	if got := n.Path(ino(t, late)); got != "" {
		t.Fatalf("walked again inside the gap: %q", got)
	}
	n.MinGap = 0
	if got := n.Path(ino(t, late)); got != "/late.scope" {
		t.Fatalf("after the gap: %q", got)
	}
	if got := n.Path(0); got != "" {
		t.Fatalf("id 0: %q", got)
	}
}

func TestCgroup2Mount(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mountinfo")
	os.WriteFile(f, []byte(
		"25 30 0:23 / /proc rw,nosuid - proc proc rw\n"+
			"35 30 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"), 0o644)
	if got := cgroup2Mount(f); got != "/sys/fs/cgroup" {
		t.Fatalf("got %q", got)
	}
	if got := cgroup2Mount("/nonexistent"); got != "" {
		t.Fatalf("got %q", got)
	}
}
