// Package procnet reads the kernel's TCP socket tables as /proc/net/tcp and
// /proc/net/tcp6 list them (the namespace's of the reading thread).
package procnet

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// TimeWait is a timewait socket: the ends of the connection it stands for,
// and how long until the kernel ends it.
type TimeWait struct {
	LAddr, RAddr netip.Addr
	LPort, RPort uint16
	Left         time.Duration
}

// userHZ is the unit of the tables' timer column (clock_t: USER_HZ, 100 on
// every architecture tcptrace builds for).
const userHZ = 100

// timerTimeWait marks a timewait socket in the timer column ("tr"): in
// TIME_WAIT or, until the peer's FIN comes, FIN_WAIT2 (the st column).
const timerTimeWait = 3

// TimeWaits calls fn for each timewait socket that r, a tcp or tcp6 table,
// lists.
func TimeWaits(r io.Reader, fn func(TimeWait)) error {
	sc := bufio.NewScanner(r)
	header := true
	for sc.Scan() {
		if header { // "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when ..."
			header = false
			continue
		}
		// sl local remote st tx_queue:rx_queue tr:tm->when ...
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			return fmt.Errorf("socket table line %q: too few fields", sc.Text())
		}
		tr, when, ok := strings.Cut(f[5], ":")
		if !ok {
			return fmt.Errorf("socket table line %q: no timer", sc.Text())
		}
		if t, err := strconv.ParseUint(tr, 16, 8); err != nil || t != timerTimeWait {
			continue
		}
		ticks, err := strconv.ParseUint(when, 16, 64)
		if err != nil {
			return fmt.Errorf("socket table line %q: timer %q", sc.Text(), when)
		}
		tw := TimeWait{Left: time.Duration(ticks) * time.Second / userHZ}
		if tw.LAddr, tw.LPort, err = parseEnd(f[1]); err != nil {
			return err
		}
		if tw.RAddr, tw.RPort, err = parseEnd(f[2]); err != nil {
			return err
		}
		fn(tw)
	}
	return sc.Err()
}

// parseEnd reads "0100007F:1F90": the address as the kernel's 32-bit words
// printed in hex (their bytes in memory order, so native-endian), the port
// in hex.
func parseEnd(s string) (netip.Addr, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	if !ok || err != nil || (len(a) != 8 && len(a) != 32) {
		return netip.Addr{}, 0, fmt.Errorf("socket table address %q", s)
	}
	var b [16]byte
	for i := 0; i < len(a)/8; i++ {
		w, err := strconv.ParseUint(a[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("socket table address %q", s)
		}
		binary.NativeEndian.PutUint32(b[4*i:], uint32(w))
	}
	if len(a) == 8 {
		return netip.AddrFrom4([4]byte(b[:4])), uint16(port), nil
	}
	// A v4-mapped address is an IPv4 connection to a dual-stack socket:
	// shown as IPv4, as the stream shows it.
	return netip.AddrFrom16(b).Unmap(), uint16(port), nil
}
