package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// checkPIDs looks up each --pid in procDir (/proc) before tracing: a process
// ID that names no process, or a thread's ID (top -H, a Java thread dump),
// matches nothing, and the tracer would show nothing, in silence. A thread's
// ID becomes its process's, with a note on stderr; a missing one gets a
// warning, and an error if none of them is running.
func checkPIDs(procDir string, pids []uint32, stderr io.Writer) ([]uint32, error) {
	if len(pids) == 0 {
		return pids, nil
	}
	var out, missing []uint32
	for _, pid := range pids {
		tgid, err := tgidOf(procDir, pid)
		switch {
		case errors.Is(err, os.ErrNotExist):
			missing = append(missing, pid)
			continue
		case err != nil:
			return nil, err
		case tgid != pid:
			fmt.Fprintf(stderr, "tcptrace: --pid %d is a thread of process %d: tracing process %d\n", pid, tgid, tgid)
		}
		out = append(out, tgid)
	}
	if len(missing) == 0 {
		return out, nil
	}
	list := joinPIDs(missing)
	if len(out) == 0 {
		return nil, fmt.Errorf("no process %s is running: --pid takes the IDs of running processes (see ps)", list)
	}
	fmt.Fprintf(stderr, "tcptrace: warning: no process %s is running: --pid %s matches nothing\n", list, list)
	return out, nil
}

// tgidOf reads the process that thread or process pid belongs to.
func tgidOf(procDir string, pid uint32) (uint32, error) {
	b, err := os.ReadFile(filepath.Join(procDir, strconv.FormatUint(uint64(pid), 10), "status"))
	if errors.Is(err, unix.ESRCH) {
		err = os.ErrNotExist // it exited while read
	}
	if err != nil {
		return 0, err
	}
	_, rest, _ := strings.Cut(string(b), "\nTgid:")
	line, _, _ := strings.Cut(rest, "\n")
	n, err := strconv.ParseUint(strings.TrimSpace(line), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s/%d/status: no Tgid line", procDir, pid)
	}
	return uint32(n), nil
}

func joinPIDs(pids []uint32) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.FormatUint(uint64(p), 10)
	}
	return strings.Join(s, ",")
}
