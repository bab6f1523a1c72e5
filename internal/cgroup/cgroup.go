// Package cgroup turns cgroup v2 ids (what bpf_get_current_cgroup_id
// returns: the cgroup directory's inode number) into paths such as
// /system.slice/nginx.service, so containerised services can be told apart.
package cgroup

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Names caches id -> path. A miss re-walks the hierarchy, at most once per
// MinGap, so a burst of new cgroups costs one walk.
type Names struct {
	root     string
	byID     map[uint64]string
	lastWalk time.Time
	MinGap   time.Duration
}

// NewNames finds the cgroup v2 mount; with none, every Path is "".
func NewNames() *Names {
	return NewNamesAt(cgroup2Mount("/proc/self/mountinfo"))
}

// NewNamesAt uses root as the cgroup v2 mount (for tests).
func NewNamesAt(root string) *Names {
	return &Names{root: root, byID: map[uint64]string{}, MinGap: time.Second}
}

// Path returns the cgroup's path relative to the hierarchy root, "" if unknown.
func (n *Names) Path(id uint64) string {
	if id == 0 || n.root == "" {
		return ""
	}
	if p, ok := n.byID[id]; ok {
		return p
	}
	if !n.lastWalk.IsZero() && time.Since(n.lastWalk) < n.MinGap {
		return ""
	}
	n.walk()
	return n.byID[id]
}

// walk rebuilds the whole cache, so removed cgroups do not pile up.
func (n *Names) walk() {
	n.lastWalk = time.Now()
	byID := make(map[uint64]string, len(n.byID))
	filepath.WalkDir(n.root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel := strings.TrimPrefix(path, n.root)
		if rel == "" {
			rel = "/"
		}
		byID[st.Ino] = rel
		return nil
	})
	n.byID = byID
}

// cgroup2Mount returns the first cgroup2 mount point in a mountinfo file.
func cgroup2Mount(mountinfo string) string {
	f, err := os.Open(mountinfo)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mountpoint ... - fstype source options
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4]
			}
		}
	}
	return ""
}
