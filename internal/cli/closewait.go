package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcptrace/tcptrace/internal/cgroup"
	"github.com/tcptrace/tcptrace/internal/closewait"
	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

// CloseWaitConfig is what `tcptrace closewait` takes.
type CloseWaitConfig struct {
	Output   output.Format
	Filter   closewait.Filter
	Interval time.Duration
	Once     bool
	Duration time.Duration
	Verbose  bool
	Help     bool
}

func newCloseWaitFlags(c *CloseWaitConfig, raw *rawFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("tcptrace closewait", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	fs.StringVarP(&raw.output, "output", "o", "text", "output format: text or json (one object per process per refresh)")
	fs.DurationVar(&c.Interval, "interval", 2*time.Second, "refresh the table this often")
	fs.BoolVar(&c.Once, "once", false, "print one snapshot and exit")
	fs.StringSliceVarP(&raw.pids, "pid", "p", nil, "only these process IDs")
	fs.StringVarP(&c.Filter.Comm, "comm", "c", "", "only processes with this command name")
	fs.StringSliceVar(&raw.ports, "port", nil, "only sockets with these local or remote ports")
	fs.DurationVar(&c.Filter.MinAge, "min-age", 0, "only sockets stuck in CLOSE_WAIT at least this long")
	fs.DurationVar(&c.Duration, "duration", 0, "stop after this long (default: until Ctrl-C)")
	fs.BoolVarP(&c.Verbose, "verbose", "v", false, "say which kernel hooks are attached")
	fs.BoolVarP(&c.Help, "help", "h", false, "show this help")
	return fs
}

// ParseCloseWait reads the arguments after "closewait".
func ParseCloseWait(args []string) (*CloseWaitConfig, error) {
	c := &CloseWaitConfig{}
	var raw rawFlags
	fs := newCloseWaitFlags(c, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, usagef("closewait: %v", err)
	}
	if c.Help {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("closewait: unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.Output, c.Filter.PIDs, c.Filter.Ports, err = raw.common(); err != nil {
		return nil, err
	}
	if c.Interval <= 0 {
		return nil, usagef("invalid --interval %v: want a positive duration such as 2s", c.Interval)
	}
	if c.Filter.MinAge < 0 || c.Duration < 0 {
		return nil, usagef("--min-age and --duration take positive durations")
	}
	if c.Filter.Comm, err = parseComm(fs, c.Filter.Comm); err != nil {
		return nil, err
	}
	return c, nil
}

// CloseWaitUsage writes the closewait help text.
func CloseWaitUsage(w io.Writer) {
	var c CloseWaitConfig
	var raw rawFlags
	fs := newCloseWaitFlags(&c, &raw)
	fmt.Fprintf(w, `tcptrace closewait: which processes hold sockets in CLOSE_WAIT (the peer closed,
the application never called close()), how many, since when, to which peers.

Usage: sudo tcptrace closewait [flags]

Flags:
%s
Ages are exact for sockets seen entering CLOSE_WAIT; for sockets already there
when tcptrace started they are lower bounds, shown as ">=" (JSON: null, with
*_at_least_seconds).
`, fs.FlagUsages())
}

func runCloseWait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := ParseCloseWait(args)
	if err != nil {
		return err
	}
	if cfg.Help {
		CloseWaitUsage(stdout)
		return nil
	}
	if cfg.Filter.PIDs, err = checkPIDs("/proc", cfg.Filter.PIDs, stderr); err != nil {
		return err
	}
	// Changes out of CLOSE_WAIT too: they end a socket's date, which no scan
	// can (a socket in an accept queue is in no process's descriptors).
	tr, err := openTracer(tracer.Options{StateMask: 1 << tcpstate.CloseWait, OldStateMask: 1 << tcpstate.CloseWait,
		EmitStates: true}, cfg.Verbose, stderr)
	if err != nil {
		return err
	}
	defer tr.Close()

	cw := &closeWaitTable{
		tr:      tr,
		tracker: closewait.NewTracker(tracer.Mono()),
		cfg:     cfg,
		out:     bufio.NewWriterSize(stdout, 64<<10),
		clear:   cfg.Output == output.Text && isTerminal(stdout),
		cgroups: cgroup.NewNames(),
	}
	if err := cw.report(); err != nil || cfg.Once {
		return err
	}
	fmt.Fprintf(stderr, "tcptrace: watching CLOSE_WAIT via %s, refreshing every %v; Ctrl-C to stop\n",
		tr.ActiveHook("state changes"), cfg.Interval)
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	if _, err := tr.Run(ctx, drainEvery, cw); err != nil {
		return err
	}
	return tr.Close()
}

// closeWaitTable refreshes the ranking every interval; the live stream only
// dates sockets entering CLOSE_WAIT.
type closeWaitTable struct {
	tr      *tracer.Tracer
	tracker *closewait.Tracker
	cfg     *CloseWaitConfig
	out     *bufio.Writer
	clear   bool
	cgroups *cgroup.Names
	last    time.Time
	scan    []owner.Holder
	scanAt  uint64 // when the scan waiting to be shown was taken; 0 if none
	line    []byte
}

func (c *closeWaitTable) Record(e *event.Event) error {
	c.tracker.Observe(e)
	return nil
}

// Idle scans when the interval is up and shows the scan on the next drain:
// by then every entry into CLOSE_WAIT that happened before the scan has come
// out of the ring buffer, so live sockets are dated exactly.
func (c *closeWaitTable) Idle() error {
	if c.scanAt != 0 {
		return c.show()
	}
	if time.Since(c.last) < c.cfg.Interval {
		return nil
	}
	return c.takeScan()
}

// report scans and shows at once (the first table, and --once).
func (c *closeWaitTable) report() error {
	if err := c.takeScan(); err != nil {
		return err
	}
	return c.show()
}

func (c *closeWaitTable) takeScan() error {
	c.last = time.Now()
	c.scan = c.scan[:0]
	err := c.tr.Scan(func(h *owner.Holder) {
		if h.State == tcpstate.CloseWait {
			c.scan = append(c.scan, *h)
		}
	})
	if err != nil {
		return fmt.Errorf("scan sockets: %w", err)
	}
	c.scanAt = tracer.Mono()
	return nil
}

func (c *closeWaitTable) show() error {
	procs := c.tracker.Report(c.scan, c.scanAt, c.cfg.Filter)
	c.scanAt = 0
	at := time.Now()
	if c.cfg.Output == output.JSON {
		for i := range procs {
			c.line = closewait.AppendJSON(c.line[:0], at, &procs[i], c.cgroups)
			c.out.Write(c.line)
		}
	} else {
		if c.clear {
			c.out.WriteString("\x1b[H\x1b[2J")
		} else if !c.cfg.Once {
			defer c.out.WriteString("\n")
		}
		if err := closewait.WriteText(c.out, at, procs); err != nil {
			return err
		}
	}
	return c.out.Flush()
}
