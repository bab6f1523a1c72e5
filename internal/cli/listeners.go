package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/tcptrace/tcptrace/internal/cgroup"
	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

// ListenersConfig is what `tcptrace listeners` takes.
type ListenersConfig struct {
	Output  output.Format
	PIDs    []uint32
	Ports   []uint16
	Verbose bool
	Help    bool
	// HookKind forces a hook kind, as for the main command (hidden; for tests).
	HookKind string
}

func newListenersFlags(c *ListenersConfig, raw *rawFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("tcptrace listeners", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	fs.StringVarP(&raw.output, "output", "o", "text", "output format: text or json (one object per listener)")
	fs.StringSliceVarP(&raw.pids, "pid", "p", nil, "only listeners of these process IDs")
	fs.StringSliceVar(&raw.ports, "port", nil, "only listeners on these ports")
	fs.BoolVarP(&c.Verbose, "verbose", "v", false, "say which kernel hooks are attached")
	fs.BoolVarP(&c.Help, "help", "h", false, "show this help")
	fs.StringVar(&c.HookKind, "hook-kind", "", "force this kind of hook wherever a feature has one: "+strings.Join(tracer.HookKinds, ", "))
	fs.MarkHidden("hook-kind")
	return fs
}

// ParseListeners reads the arguments after "listeners".
func ParseListeners(args []string) (*ListenersConfig, error) {
	c := &ListenersConfig{}
	var raw rawFlags
	fs := newListenersFlags(c, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, usagef("listeners: %v", err)
	}
	if c.Help {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("listeners: unexpected argument %q", fs.Arg(0))
	}
	if c.HookKind != "" && !contains(tracer.HookKinds, c.HookKind) {
		return nil, usagef("listeners: invalid --hook-kind %q: want one of %s", c.HookKind, strings.Join(tracer.HookKinds, ", "))
	}
	var err error
	if c.Output, c.PIDs, c.Ports, err = raw.common(); err != nil {
		return nil, err
	}
	return c, nil
}

func runListeners(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := ParseListeners(args)
	if err != nil {
		return err
	}
	if cfg.Help {
		var c ListenersConfig
		var raw rawFlags
		fmt.Fprintf(stdout, `tcptrace listeners: every listening TCP socket, with its owner, how full its
accept queue (BACKLOG/MAX) and SYN queue are, whether the kernel has flagged
a possible SYN flood there (SYNFLOOD: its SYN queue overflowed since listen(),
and it sent syncookies or, without them, dropped SYNs), and how many
connection attempts it has dropped since listen() (its own counter, sk_drops).

Usage: sudo tcptrace listeners [flags]

Flags:
%s`, newListenersFlags(&c, &raw).FlagUsages())
		return nil
	}
	if cfg.PIDs, err = checkPIDs("/proc", cfg.PIDs, stderr); err != nil {
		return err
	}
	tr, err := openTracer(tracer.Options{HookKind: cfg.HookKind}, cfg.Verbose, stderr)
	if err != nil {
		return err
	}
	defer tr.Close()
	// The snapshot names the owners and shows the walk every listener.
	owners := owner.NewResolver(tr, nil)
	if err := owners.Snapshot(tracer.Mono()); err != nil {
		return fmt.Errorf("snapshot socket owners: %w", err)
	}
	var rows []tracer.Listener
	err = tr.PollListeners(func(l *tracer.Listener) {
		if (len(cfg.PIDs) == 0 || slices.Contains(cfg.PIDs, l.PID)) && (len(cfg.Ports) == 0 || slices.Contains(cfg.Ports, l.Port)) {
			rows = append(rows, *l)
		}
	})
	if errors.Is(err, tracer.ErrNoListenerWalk) {
		return fmt.Errorf("this kernel cannot walk listeners: it refused BPF map iterators (5.9+) and bpf_for_each_map_elem programs (5.13+); tcptrace listeners -v says why")
	} else if err != nil {
		return err
	}
	slices.SortFunc(rows, func(a, b tracer.Listener) int {
		if c := cmp.Compare(b.Drops, a.Drops); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	return writeListeners(stdout, cfg.Output, rows, cgroup.NewNames())
}

func writeListeners(w io.Writer, format output.Format, rows []tracer.Listener, cgroups *cgroup.Names) error {
	var b []byte
	if format == output.Text {
		b = fmt.Appendf(b, "%-8s %-16s %-28s %13s %6s %8s %10s %11s\n", "PID", "COMM", "LOCAL", "BACKLOG/MAX", "SYNQ", "SYNFLOOD", "DROPS", "NETNS")
	}
	for i := range rows {
		l := &rows[i]
		e := event.Event{PID: l.PID, Comm: l.Comm}
		comm := string(output.AppendPrintable(nil, e.CommBytes()))
		local := l.Addr.String() + ":" + strconv.Itoa(int(l.Port))
		if l.Family == event.IPv6 {
			local = "[" + l.Addr.String() + "]:" + strconv.Itoa(int(l.Port))
		}
		if format == output.Text {
			pid := "-"
			if l.PID != 0 {
				pid = strconv.Itoa(int(l.PID))
			} else {
				comm = "?"
			}
			flood := "no"
			if l.SynFlood {
				flood = "yes"
			}
			b = fmt.Appendf(b, "%-8s %-16s %-28s %13s %6d %8s %10d %11d\n", pid, comm, local,
				fmt.Sprintf("%d/%d", l.Backlog, l.MaxBacklog), l.SynQueue, flood, l.Drops, l.NetNS)
			continue
		}
		b = append(b, `{"type":"listener","pid":`...)
		b = strconv.AppendUint(b, uint64(l.PID), 10)
		b = append(b, `,"comm":`...)
		b = output.AppendJSONString(b, e.CommBytes())
		b = append(b, `,"cgroup":`...)
		if p := cgroups.Path(l.Cgroup); p != "" && l.PID != 0 {
			b = output.AppendJSONString(b, []byte(p))
		} else {
			b = append(b, "null"...)
		}
		b = fmt.Appendf(b, `,"family":"%s","laddr":"%s","lport":%d,"backlog":%d,"max_backlog":%d,"syn_queue":%d,"syn_flood":%t,"drops":%d,"netns":%d}`+"\n",
			l.Family, l.Addr, l.Port, l.Backlog, l.MaxBacklog, l.SynQueue, l.SynFlood, l.Drops, l.NetNS)
	}
	_, err := w.Write(b)
	return err
}
