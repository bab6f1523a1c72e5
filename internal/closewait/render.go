package closewait

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/tcptrace/tcptrace/internal/output"
)

// topN is how many peers and local ports a text row shows.
const topN = 3

// CgroupNamer turns a cgroup v2 id into its path.
type CgroupNamer interface{ Path(id uint64) string }

// WriteText writes one ranked table.
func WriteText(w io.Writer, at time.Time, procs []Process) error {
	total := 0
	for i := range procs {
		total += len(procs[i].Sockets)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  CLOSE_WAIT: %d sockets held by %d processes\n", at.Format("15:04:05"), total, len(procs))
	if len(procs) > 0 {
		fmt.Fprintf(&b, "%-8s %-16s %7s  %-9s %-44s %s\n", "PID", "COMM", "COUNT", "OLDEST", "TOP PEERS", "LOCAL PORTS")
	}
	for i := range procs {
		p := &procs[i]
		var peers, ports []string
		for _, c := range p.Peers[:min(topN, len(p.Peers))] {
			peers = append(peers, fmt.Sprintf("%s (%d)", c.Value, c.N))
		}
		for _, c := range p.LocalPorts[:min(topN, len(p.LocalPorts))] {
			ports = append(ports, fmt.Sprintf("%d (%d)", c.Value, c.N))
		}
		comm := string(output.AppendPrintable(nil, commBytes(&p.Comm)))
		fmt.Fprintf(&b, "%-8d %-16s %7d  %-9s %-44s %s\n", p.PID, comm, len(p.Sockets), FormatAge(p.Oldest),
			strings.Join(peers, " "), strings.Join(ports, " "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// FormatAge shows an exact age as "3m12s" and a lower bound as ">=3m12s".
func FormatAge(a Age) string {
	d := a.D.Round(time.Second)
	if a.D < 10*time.Second {
		d = a.D.Round(100 * time.Millisecond)
	}
	if a.Known {
		return d.String()
	}
	return ">=" + d.String()
}

// AppendJSON appends one process as a JSON line: pid, comm, count,
// oldest_seconds (null unless every age is exact) and its sockets.
func AppendJSON(b []byte, at time.Time, p *Process, cgroups CgroupNamer) []byte {
	b = append(b, `{"type":"close_wait","time":"`...)
	b = at.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000000Z07:00")
	b = append(b, `","pid":`...)
	b = strconv.AppendUint(b, uint64(p.PID), 10)
	b = append(b, `,"comm":`...)
	b = output.AppendJSONString(b, commBytes(&p.Comm))
	b = append(b, `,"uid":`...)
	b = strconv.AppendUint(b, uint64(p.UID), 10)
	b = append(b, `,"cgroup":`...)
	if path := pathOf(cgroups, p.Cgroup); path != "" {
		b = output.AppendJSONString(b, []byte(path))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, int64(len(p.Sockets)), 10)
	b = appendAge(b, "oldest_seconds", p.Oldest)
	b = append(b, `,"sockets":[`...)
	for i, s := range p.Sockets {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"laddr":"`...)
		b = s.LAddr.AppendTo(b)
		b = append(b, `","lport":`...)
		b = strconv.AppendUint(b, uint64(s.LPort), 10)
		b = append(b, `,"raddr":"`...)
		b = s.RAddr.AppendTo(b)
		b = append(b, `","rport":`...)
		b = strconv.AppendUint(b, uint64(s.RPort), 10)
		b = appendAge(b, "age_seconds", s.Age)
		b = append(b, '}')
	}
	b = append(b, `],"peers":[`...)
	for i, c := range p.Peers {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"raddr":"`...)
		b = c.Value.Addr().AppendTo(b)
		b = append(b, `","rport":`...)
		b = strconv.AppendUint(b, uint64(c.Value.Port()), 10)
		b = append(b, `,"count":`...)
		b = strconv.AppendInt(b, int64(c.N), 10)
		b = append(b, '}')
	}
	b = append(b, `],"local_ports":[`...)
	for i, c := range p.LocalPorts {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"lport":`...)
		b = strconv.AppendUint(b, uint64(c.Value), 10)
		b = append(b, `,"count":`...)
		b = strconv.AppendInt(b, int64(c.N), 10)
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

// appendAge writes "key":seconds, or "key":null plus "key_at_least":bound
// (with key's "_seconds" moved to the end) when the age is only a lower bound.
func appendAge(b []byte, key string, a Age) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":`...)
	secs := strconv.AppendFloat(nil, a.D.Seconds(), 'f', 3, 64)
	if a.Known {
		return append(b, secs...)
	}
	b = append(b, `null,"`...)
	b = append(b, strings.TrimSuffix(key, "_seconds")...)
	b = append(b, `_at_least_seconds":`...)
	return append(b, secs...)
}

func pathOf(c CgroupNamer, id uint64) string {
	if c == nil {
		return ""
	}
	return c.Path(id)
}
