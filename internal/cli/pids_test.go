package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeProc makes a /proc with a status file per ID: tgid[id].
func fakeProc(t *testing.T, tgid map[uint32]uint32) string {
	dir := t.TempDir()
	for id, tg := range tgid {
		d := filepath.Join(dir, joinPIDs([]uint32{id}))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		status := "Name:\tnode\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t" + joinPIDs([]uint32{tg}) + "\nNgid:\t0\n"
		if err := os.WriteFile(filepath.Join(d, "status"), []byte(status), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheckPIDs(t *testing.T) {
	proc := fakeProc(t, map[uint32]uint32{100: 100, 101: 100, 200: 200})
	var stderr bytes.Buffer
	got, err := checkPIDs(proc, []uint32{100, 200}, &stderr)
	if err != nil || !slices.Equal(got, []uint32{100, 200}) || stderr.Len() != 0 {
		t.Fatalf("running processes: %v, %v, %q", got, err, stderr.String())
	}
	// A thread's ID (top -H) is its process's.
	got, err = checkPIDs(proc, []uint32{101}, &stderr)
	if err != nil || !slices.Equal(got, []uint32{100}) || !strings.Contains(stderr.String(), "--pid 101 is a thread of process 100") {
		t.Fatalf("a thread: %v, %v, %q", got, err, stderr.String())
	}
	stderr.Reset()
	// One missing of two: a warning.
	got, err = checkPIDs(proc, []uint32{200, 999}, &stderr)
	if err != nil || !slices.Equal(got, []uint32{200}) || !strings.Contains(stderr.String(), "warning: no process 999 is running") {
		t.Fatalf("one missing: %v, %v, %q", got, err, stderr.String())
	}
	// None running: an error naming them.
	if _, err := checkPIDs(proc, []uint32{998, 999}, &stderr); err == nil || !strings.Contains(err.Error(), "no process 998,999 is running") {
		t.Fatalf("none running: %v", err)
	}
	// A status without its Tgid line: an error, not a guess.
	if err := os.WriteFile(filepath.Join(proc, "200", "status"), []byte("Name:\tnode\nNgid:\t0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := checkPIDs(proc, []uint32{200}, &stderr); err == nil || !strings.Contains(err.Error(), "no Tgid line") {
		t.Fatalf("no Tgid line: %v", err)
	}
	if got, err := checkPIDs(proc, nil, &stderr); err != nil || got != nil {
		t.Fatalf("no --pid: %v, %v", got, err)
	}
}
