package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// funcRange is where kernel function name's code lies, [lo, hi): from its
// address in /proc/kallsyms to the next symbol's.
func funcRange(name string) (lo, hi uint64, err error) {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	return funcRangeIn(f, name)
}

// errHiddenAddrs: kallsyms lists every address as 0 to this reader.
var errHiddenAddrs = errors.New("/proc/kallsyms shows no addresses (kernel.kptr_restrict; needs CAP_SYSLOG)")

func funcRangeIn(r io.Reader, name string) (lo, hi uint64, err error) {
	// One pass: the symbols are not sorted by address, so keep every address
	// until the function's is known, then the nearest above it.
	var before []uint64
	sc := bufio.NewScanner(r)
	found := false
	for sc.Scan() {
		// "ffffffff82078840 T tcp_rcv_state_process" ["[module]"]
		fs := strings.Fields(sc.Text())
		if len(fs) < 3 {
			continue
		}
		addr, err := strconv.ParseUint(fs[0], 16, 64)
		if err != nil || len(fs) > 3 { // a module's: not in the kernel's own text
			continue
		}
		if !found && fs[2] == name && (fs[1] == "T" || fs[1] == "t") {
			if addr == 0 {
				return 0, 0, errHiddenAddrs
			}
			found, lo = true, addr
			for _, a := range before {
				if a > lo && (hi == 0 || a < hi) {
					hi = a
				}
			}
			before = nil
			continue
		}
		if !found {
			before = append(before, addr)
		} else if addr > lo && (hi == 0 || addr < hi) {
			hi = addr
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, fmt.Errorf("read /proc/kallsyms: %w", err)
	}
	if !found {
		return 0, 0, fmt.Errorf("/proc/kallsyms has no function %s", name)
	}
	if hi == 0 {
		return 0, 0, fmt.Errorf("/proc/kallsyms: no symbol after %s, so no end for it", name)
	}
	return lo, hi, nil
}
