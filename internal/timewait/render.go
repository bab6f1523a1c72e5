package timewait

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/internal/output"
)

// topN is how many peers a text row shows.
const topN = 3

// WriteText writes one ranked table; watched is Tracker.Watched.
func WriteText(w io.Writer, at time.Time, watched float64, procs []Process) error {
	var total Counts
	var earlier uint64
	n := 0
	for i := range procs {
		if procs[i].BeforeStart {
			earlier += procs[i].TimeWait
			continue
		}
		total.add(&procs[i].Counts)
		n++
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  TIME_WAIT: %d closes into it over the last %s by %d processes", at.Format("15:04:05"), total.TimeWait, span(watched), n)
	if earlier > 0 {
		fmt.Fprintf(&b, ", %d timewait sockets from before tcptrace started", earlier)
	}
	fmt.Fprintf(&b, "; %d connects, %d without a free port\n", total.Connects, total.NoPort)
	if len(procs) > 0 {
		fmt.Fprintf(&b, "%-8s %-16s %9s %9s %8s  %s\n", "PID", "COMM", "TIME_WAIT", "CONNECTS", "NO PORT", "TOP PEERS (TIME_WAIT, share of ephemeral ports)")
	}
	for i := range procs {
		p := &procs[i]
		var peers []string
		for _, c := range p.Peers[:min(topN, len(p.Peers))] {
			s := fmt.Sprintf("%s %d", c.Name(), c.TimeWait)
			if share, ok := c.Share(); ok && c.Ephemeral > 0 {
				s += fmt.Sprintf(" (%.0f%%)", 100*share)
			}
			peers = append(peers, s)
		}
		pid, comm := strconv.FormatUint(uint64(p.PID), 10), string(output.AppendPrintable(nil, commOf(&p.Comm)))
		if p.BeforeStart {
			pid, comm = "-", "(before start)"
		}
		fmt.Fprintf(&b, "%-8s %-16s %9d %9d %8d  %s\n", pid, comm, p.TimeWait, p.Connects, p.NoPort, strings.Join(peers, "  "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// span says how far back the counts reach: the window, or less while
// tcptrace has watched less.
func span(watched float64) string {
	if watched >= Window {
		return fmt.Sprintf("%ds", Window)
	}
	return fmt.Sprintf("%.0fs (since tcptrace started)", watched)
}

// AppendJSON appends one process as a JSON line: its counts over the window
// (window_seconds: how far back they reach) and every peer's.
func AppendJSON(b []byte, at time.Time, watched float64, p *Process) []byte {
	b = append(b, `{"type":"time_wait","time":"`...)
	b = at.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000Z07:00")
	b = append(b, `","window_seconds":`...)
	b = strconv.AppendFloat(b, watched, 'f', 3, 64)
	b = append(b, `,"netns":`...)
	b = strconv.AppendUint(b, uint64(p.NetNS), 10)
	b = append(b, `,"pid":`...)
	b = strconv.AppendUint(b, uint64(p.PID), 10)
	b = append(b, `,"comm":`...)
	b = output.AppendJSONString(b, commOf(&p.Comm))
	b = append(b, `,"before_start":`...)
	b = strconv.AppendBool(b, p.BeforeStart)
	b = appendCounts(b, &p.Counts)
	b = append(b, `,"peers":[`...)
	for i := range p.Peers {
		c := &p.Peers[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"raddr":"`...)
		b = c.RAddr.AppendTo(b)
		b = append(b, '"')
		b = appendPort(b, "rport", c.RPort)
		b = appendPort(b, "lport", c.LPort)
		b = appendCounts(b, &c.Counts)
		b = append(b, `,"time_wait_ephemeral":`...)
		b = strconv.AppendUint(b, c.Ephemeral, 10)
		b = append(b, `,"ephemeral_ports":`...)
		if share, ok := c.Share(); ok {
			b = strconv.AppendInt(b, int64(c.Ports), 10)
			b = append(b, `,"ephemeral_share":`...)
			b = strconv.AppendFloat(b, share, 'f', 4, 64)
		} else {
			b = append(b, `null,"ephemeral_share":null`...)
		}
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

// appendPort appends ,"key":port, or null for 0 (a peer has one port or the other).
func appendPort(b []byte, key string, port uint16) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":`...)
	if port == 0 {
		return append(b, "null"...)
	}
	return strconv.AppendUint(b, uint64(port), 10)
}

// Name shows a peer as 10.0.0.9:3306 (connections to it), or as
// 10.0.0.7->:80 (connections from it to local port 80).
func (p *Peer) Name() string {
	if p.LPort != 0 {
		return fmt.Sprintf("%s->:%d", p.RAddr, p.LPort)
	}
	return netip.AddrPortFrom(p.RAddr, p.RPort).String()
}

func appendCounts(b []byte, c *Counts) []byte {
	b = append(b, `,"time_wait":`...)
	b = strconv.AppendUint(b, c.TimeWait, 10)
	b = append(b, `,"connects":`...)
	b = strconv.AppendUint(b, c.Connects, 10)
	b = append(b, `,"no_port":`...)
	return strconv.AppendUint(b, c.NoPort, 10)
}

func commOf(c *[16]byte) []byte {
	if i := bytes.IndexByte(c[:], 0); i >= 0 {
		return c[:i]
	}
	return c[:]
}
