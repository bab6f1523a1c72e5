package cli

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/netns"
	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/procnet"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
	"github.com/tcptrace/tcptrace/internal/timewait"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

// TimeWaitConfig is what `tcptrace timewait` takes.
type TimeWaitConfig struct {
	Output   output.Format
	PIDs     []uint32
	Ports    []uint16
	Comm     string
	Interval time.Duration
	Duration time.Duration
	Verbose  bool
	Help     bool
}

func newTimeWaitFlags(c *TimeWaitConfig, raw *rawFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("tcptrace timewait", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	fs.SortFlags = false
	fs.StringVarP(&raw.output, "output", "o", "text", "output format: text or json (one object per process per refresh)")
	fs.DurationVar(&c.Interval, "interval", 2*time.Second, "refresh the table this often")
	fs.StringSliceVarP(&raw.pids, "pid", "p", nil, "only these process IDs")
	fs.StringVarP(&c.Comm, "comm", "c", "", "only processes with this command name")
	fs.StringSliceVar(&raw.ports, "port", nil, "only sockets with these local or remote ports")
	fs.DurationVar(&c.Duration, "duration", 0, "stop after this long (default: until Ctrl-C)")
	fs.BoolVarP(&c.Verbose, "verbose", "v", false, "say which kernel hooks are attached")
	fs.BoolVarP(&c.Help, "help", "h", false, "show this help")
	return fs
}

// ParseTimeWait reads the arguments after "timewait".
func ParseTimeWait(args []string) (*TimeWaitConfig, error) {
	c := &TimeWaitConfig{}
	var raw rawFlags
	fs := newTimeWaitFlags(c, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, usagef("timewait: %v", err)
	}
	if c.Help {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("timewait: unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.Output, c.PIDs, c.Ports, err = raw.common(); err != nil {
		return nil, err
	}
	if c.Interval <= 0 {
		return nil, usagef("invalid --interval %v: want a positive duration such as 2s", c.Interval)
	}
	if c.Duration < 0 {
		return nil, usagef("--duration takes a positive duration")
	}
	if c.Comm, err = parseComm(fs, c.Comm); err != nil {
		return nil, err
	}
	return c, nil
}

// TimeWaitUsage writes the timewait help text.
func TimeWaitUsage(w io.Writer) {
	var c TimeWaitConfig
	var raw rawFlags
	fs := newTimeWaitFlags(&c, &raw)
	fmt.Fprintf(w, `tcptrace timewait: which processes pile up TIME_WAIT sockets and use up ephemeral
ports, to which peers: per process and peer, over the last %d s (a timewait
socket's life), the closes that left a timewait socket (what is in TIME_WAIT
now), the connect()s made, and those that found no free local port
(EADDRNOTAVAIL). A peer's share is the part of its namespace's ephemeral port
range (net.ipv4.ip_local_port_range) its timewait sockets hold: at 100%%
connect() to it fails, unless the kernel may reuse them (net.ipv4.tcp_tw_reuse).

Usage: sudo tcptrace timewait [flags]

Flags:
%s
The timewait sockets already there at the start are counted from the first
table, per namespace in a row "(before start)": who made them is unknown
(--pid and --comm leave them out). Closes and connects count from the start:
until tcptrace has watched for %d s, the header says how long it has. At exit
(Ctrl-C, --duration) a last table is printed.
`, timewait.Window, fs.FlagUsages(), timewait.Window)
}

func runTimeWait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := ParseTimeWait(args)
	if err != nil {
		return err
	}
	if cfg.Help {
		TimeWaitUsage(stdout)
		return nil
	}
	if cfg.PIDs, err = checkPIDs("/proc", cfg.PIDs, stderr); err != nil {
		return err
	}
	// Closes into TIME_WAIT, and every way out of SYN_SENT: a connect()
	// made, or failed for want of a port.
	tr, err := openTracer(tracer.Options{StateMask: 1 << tcpstate.TimeWait, OldStateMask: 1 << tcpstate.SynSent,
		EmitStates: true, PIDs: cfg.PIDs, Ports: cfg.Ports}, cfg.Verbose, stderr)
	if err != nil {
		return err
	}
	defer tr.Close()

	ranges := newPortRanges(stderr)
	tw := &timeWaitTable{
		tracker: timewait.NewTracker(tracer.Mono(), ranges.lookup),
		cfg:     cfg,
		out:     bufio.NewWriterSize(stdout, 64<<10),
		clear:   cfg.Output == output.Text && isTerminal(stdout),
		last:    time.Now(),
	}
	// What is in TIME_WAIT already: counted from the start, owner unknown
	// (so not where the table is for some processes only). After the hook
	// is attached, so that no close falls between the two.
	if len(cfg.PIDs) == 0 && cfg.Comm == "" {
		earlier, spaces := earlierTimeWaits(cfg.Ports, ranges, stderr)
		tw.tracker.Seed(earlier, tracer.Mono())
		if cfg.Verbose {
			fmt.Fprintf(stderr, "tcptrace: %d timewait sockets from before the start, in %d network namespaces (their /proc/net/tcp and tcp6)\n",
				len(earlier), spaces)
		}
	}
	fmt.Fprintf(stderr, "tcptrace: counting closes into TIME_WAIT and connects via %s, refreshing every %v; Ctrl-C to stop\n",
		tr.ActiveHook("state changes"), cfg.Interval)
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	if _, err := tr.Run(ctx, drainEvery, tw); err != nil {
		return err
	}
	if err := tw.show(); err != nil { // what came in since the last table
		return err
	}
	return tr.Close()
}

// timeWaitTable counts the stream and shows the ranking every interval.
type timeWaitTable struct {
	tracker *timewait.Tracker
	cfg     *TimeWaitConfig
	out     *bufio.Writer
	clear   bool
	last    time.Time
	line    []byte
}

func (c *timeWaitTable) Record(e *event.Event) error {
	if c.cfg.Comm != "" && string(e.CommBytes()) != c.cfg.Comm {
		return nil
	}
	c.tracker.Observe(e)
	return nil
}

func (c *timeWaitTable) Idle() error {
	if time.Since(c.last) < c.cfg.Interval {
		return nil
	}
	return c.show()
}

func (c *timeWaitTable) show() error {
	c.last = time.Now()
	now := tracer.Mono()
	procs := c.tracker.Report(now)
	watched := c.tracker.Watched(now)
	if c.cfg.Output == output.JSON {
		for i := range procs {
			c.line = timewait.AppendJSON(c.line[:0], c.last, watched, &procs[i])
			c.out.Write(c.line)
		}
	} else {
		if c.clear {
			c.out.WriteString("\x1b[H\x1b[2J")
		}
		if err := timewait.WriteText(c.out, c.last, watched, procs); err != nil {
			return err
		}
		if !c.clear {
			c.out.WriteString("\n")
		}
	}
	return c.out.Flush()
}

// earlierTimeWaits lists the timewait sockets of every network namespace
// (those with one of ports at either end, if any), and how many namespaces
// it read; it learns each one's ephemeral port range while there.
func earlierTimeWaits(ports []uint16, ranges *portRanges, stderr io.Writer) ([]timewait.Earlier, int) {
	var out []timewait.Earlier
	read, failed := 0, 0
	var firstErr error
	for ino, path := range netns.All() {
		var found []timewait.Earlier
		var portRange string
		err := netns.In(path, ino, func() error {
			for _, table := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				f, err := os.Open(table)
				if errors.Is(err, os.ErrNotExist) && strings.HasSuffix(table, "6") {
					continue // no IPv6 in this kernel
				}
				if err != nil {
					return err
				}
				err = procnet.TimeWaits(f, func(s procnet.TimeWait) {
					if len(ports) == 0 || slices.Contains(ports, s.LPort) || slices.Contains(ports, s.RPort) {
						found = append(found, timewait.Earlier{NetNS: ino, LAddr: s.LAddr, RAddr: s.RAddr,
							LPort: s.LPort, RPort: s.RPort, Left: s.Left})
					}
				})
				f.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", table, err)
				}
			}
			b, err := os.ReadFile("/proc/sys/" + portRangeSysctl)
			portRange = string(b)
			return err
		})
		if errors.Is(err, os.ErrNotExist) {
			continue // gone meanwhile (its only process exited)
		}
		if err != nil {
			// One tcptrace may not enter (setns needs CAP_SYS_ADMIN).
			failed++
			firstErr = cmp.Or(firstErr, fmt.Errorf("network namespace %d: %w", ino, err))
			continue
		}
		read++
		ranges.learn(ino, portRange)
		out = append(out, found...)
	}
	if failed > 0 {
		fmt.Fprintf(stderr, "tcptrace: timewait: the timewait sockets from before the start of %d network namespaces are left out (%v)\n", failed, firstErr)
	}
	return out, read
}

// portRanges knows each network namespace's ephemeral port range, read once
// (through a process of that namespace; tcptrace's own directly).
type portRanges struct {
	self  uint32 // tcptrace's own namespace, once looked up
	known map[uint32]portRange
	// tried: a failed lookup through a process, and when to try it again;
	// another process of the namespace is tried at once (the one that
	// failed is often a client gone by the time its close is counted).
	tried map[nsPID]time.Time
	// searched: when /proc may next be searched for a way into a namespace
	// whose process is gone (a search stats every process and thread).
	searched map[uint32]time.Time
	warned   map[uint32]bool
	warn     io.Writer // told of each namespace whose range is unknown, once
}

type nsPID struct{ ns, pid uint32 }

type portRange struct{ lo, hi uint16 }

const portRangeSysctl = "net/ipv4/ip_local_port_range"

// rangeRetry is how long a failed way into a namespace waits before it is
// tried again.
const rangeRetry = time.Second

func newPortRanges(warn io.Writer) *portRanges {
	return &portRanges{known: map[uint32]portRange{}, tried: map[nsPID]time.Time{},
		searched: map[uint32]time.Time{}, warned: map[uint32]bool{}, warn: warn}
}

func (r *portRanges) lookup(ns, pid uint32) (uint16, uint16, bool) {
	if pr, ok := r.known[ns]; ok {
		return pr.lo, pr.hi, true
	}
	k := nsPID{ns, pid}
	now := time.Now()
	if again, ok := r.tried[k]; ok && now.Before(again) {
		return 0, 0, false
	}
	if r.self == 0 {
		var st unix.Stat_t
		if unix.Stat("/proc/self/ns/net", &st) == nil {
			r.self = uint32(st.Ino)
		}
	}
	var text string
	var err error
	if ns == r.self {
		var b []byte
		b, err = os.ReadFile("/proc/sys/" + portRangeSysctl)
		text = string(b)
	} else if text, err = netns.SysctlOf(int(pid), ns, portRangeSysctl); err != nil && !now.Before(r.searched[ns]) {
		r.searched[ns] = now.Add(rangeRetry)
		if path := netns.Find(ns); path != "" {
			text, err = netns.SysctlAt(path, ns, portRangeSysctl)
		}
	}
	var pr portRange
	if err == nil {
		pr, err = parsePortRange(text)
	}
	if err != nil {
		if len(r.tried) > 4096 {
			clear(r.tried)
		}
		r.tried[k] = now.Add(rangeRetry)
		if !r.warned[ns] {
			r.warned[ns] = true
			fmt.Fprintf(r.warn, "tcptrace: timewait: the ephemeral port range of network namespace %d is unknown for now (%v): until it is read, no share of it is shown and accepted connections there are counted per client\n", ns, err)
		}
		return 0, 0, false
	}
	r.known[ns] = pr
	return pr.lo, pr.hi, true
}

// learn keeps ns's range, read as text from its sysctl, if it parses.
func (r *portRanges) learn(ns uint32, text string) {
	if pr, err := parsePortRange(text); err == nil {
		r.known[ns] = pr
	}
}

func parsePortRange(text string) (portRange, error) {
	var pr portRange
	_, err := fmt.Sscan(strings.TrimSpace(text), &pr.lo, &pr.hi)
	return pr, err
}
