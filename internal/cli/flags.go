// Package cli parses tcptrace's command line and runs the stream.
package cli

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

// UsageError is a bad command line: exit code 2.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &UsageError{fmt.Sprintf(format, a...)} }

// Config is everything the command line sets.
type Config struct {
	Output output.Format
	PIDs   []uint32
	Comm   string
	Ports  []uint16
	States []tcpstate.State
	// ErrorsOnly keeps, of the state changes, only closes with an error.
	ErrorsOnly bool
	Family     int // 0, 4 or 6
	Duration   time.Duration
	RingSize   uint32
	// Events selects the record kinds: states, drops, retransmits, resets.
	EmitStates, EmitDrops, EmitRetrans, EmitResets bool
	// DropRate is how many per-packet drop records a listener may send per
	// second before they fold into one summary per second.
	DropRate int
	// CloseWaitAlert, when set, adds a close_wait_stuck record for every
	// socket that sits in CLOSE_WAIT this long.
	CloseWaitAlert time.Duration
	Verbose        bool
	Version        bool
	Help           bool

	// HookKind forces one kind of hook where a feature has it (hidden; for
	// tests and debugging).
	HookKind string
	// UnseenState makes the kernel side act as if no program ran for changes
	// into this state (hidden; tests of gap detection), 0 for none.
	UnseenState tcpstate.State
	// NoMountTracefs forbids mounting tracefs for the classic-tracepoint fallback.
	NoMountTracefs bool
	// Without names an optional feature to leave out (hidden; tests of the
	// degraded paths), "" for none.
	Without string
}

// neverEntered: states the kernel has but no state change leads into, and
// where to look instead. (TIME_WAIT is not one: see event.Event.Into.)
var neverEntered = map[tcpstate.State]string{
	tcpstate.NewSynRecv: "a handshake's request socket is born in it; --events drops reports the handshakes " +
		"a full SYN queue drops, and tcptrace listeners shows the queue",
	tcpstate.BoundInactive: "ss shows bound, unconnected sockets in it; they are in CLOSE",
}

// StateMask is the BPF filter bit set for the --state list (0: all states).
func (c *Config) StateMask() uint32 {
	var m uint32
	for _, s := range c.States {
		m |= 1 << s
	}
	return m
}

// newFlagSet builds a fresh FlagSet bound to c; nothing global, so tests can parse.
func newFlagSet(c *Config, raw *rawFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("tcptrace", pflag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are reported once, by the caller
	fs.Usage = func() {}
	fs.SortFlags = false
	fs.StringVarP(&raw.output, "output", "o", "text", "output format: text or json")
	fs.StringSliceVarP(&raw.pids, "pid", "p", nil, "only these process IDs (comma-separated list)")
	fs.StringVarP(&c.Comm, "comm", "c", "", "only processes with this command name")
	fs.StringSliceVar(&raw.ports, "port", nil, "only sockets with these local or remote ports")
	fs.StringSliceVar(&raw.states, "state", nil, "only changes into these states, e.g. CLOSE_WAIT; TIME_WAIT: closes that leave a timewait socket")
	fs.BoolVar(&c.ErrorsOnly, "errors", false, "of the state changes, only closes with an error: resets, timeouts, refused connects")
	fs.BoolVarP(&raw.v4, "ipv4", "4", false, "only IPv4 (including v4-mapped IPv6)")
	fs.BoolVarP(&raw.v6, "ipv6", "6", false, "only IPv6")
	fs.DurationVar(&c.Duration, "duration", 0, "stop after this long, e.g. 30s (default: until Ctrl-C)")
	fs.StringSliceVar(&raw.events, "events", []string{"states", "drops"}, "record kinds: states, drops (with SYN floods), retransmits (each segment the kernel retransmits), resets (each reset this host sends)")
	fs.StringVar(&raw.dropRate, "drop-rate", "50", "per-packet drop records per listener per second before they fold into a summary")
	fs.DurationVar(&c.CloseWaitAlert, "close-wait-alert", 0, "report each socket stuck in CLOSE_WAIT this long (a close_wait_stuck record)")
	fs.StringVar(&raw.ringSize, "ring-size", "8M", "ring buffer size, a power of two from 4K, e.g. 32M on very busy hosts; shared out over one ring per online CPU, each at least 1M (or this size if smaller), plus one for the CPUs offline at the start")
	fs.BoolVarP(&c.Verbose, "verbose", "v", false, "say which kernel hooks are attached and why others are not")
	fs.BoolVar(&c.Version, "version", false, "print the version and exit")
	fs.BoolVarP(&c.Help, "help", "h", false, "show this help")
	fs.StringVar(&c.HookKind, "hook-kind", "", "force this kind of hook wherever a feature has one: "+strings.Join(tracer.HookKinds, ", "))
	fs.BoolVar(&c.NoMountTracefs, "no-mount-tracefs", false, "never mount tracefs: not for the classic tracepoint, nor privately for the syscalls: tracepoints (sys_exit is used instead)")
	fs.MarkHidden("hook-kind")
	fs.StringVar(&raw.unseen, "test-unseen-state", "", "tests: the kernel side ignores changes into this state")
	fs.MarkHidden("test-unseen-state")
	fs.StringVar(&c.Without, "test-without", "", "tests: leave out this optional feature, or this hook (as -v names them)")
	fs.MarkHidden("test-without")
	return fs
}

type rawFlags struct {
	output, ringSize, unseen    string
	dropRate                    string
	pids, ports, states, events []string
	v4, v6                      bool
}

// Parse reads args (without the program name) into a Config.
func Parse(args []string) (*Config, error) {
	c := &Config{}
	var raw rawFlags
	fs := newFlagSet(c, &raw)
	if err := fs.Parse(args); err != nil {
		return nil, usagef("%v", err)
	}
	if c.Help || c.Version {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q (subcommands: closewait, listeners, timewait)", fs.Arg(0))
	}
	var err error
	if c.Output, c.PIDs, c.Ports, err = raw.common(); err != nil {
		return nil, err
	}
	for _, s := range raw.states {
		st, err := tcpstate.Parse(s)
		if err != nil {
			return nil, usagef("invalid --state: %v", err)
		}
		if why := neverEntered[st]; why != "" {
			return nil, usagef("invalid --state %s: no socket ever changes into it (%s)", st, why)
		}
		c.States = append(c.States, st)
	}
	if c.ErrorsOnly && len(c.States) > 0 && !slices.Contains(c.States, tcpstate.Close) {
		return nil, usagef("--errors selects closes, which --state leaves out: add CLOSE to --state, or leave --state out")
	}
	switch {
	case raw.v4 && raw.v6:
		return nil, usagef("-4 and -6 exclude each other: give one, or neither for both")
	case raw.v4:
		c.Family = 4
	case raw.v6:
		c.Family = 6
	}
	if c.CloseWaitAlert < 0 || fs.Changed("close-wait-alert") && c.CloseWaitAlert == 0 {
		return nil, usagef("invalid --close-wait-alert %v: want a positive duration such as 60s", c.CloseWaitAlert)
	}
	if c.Duration < 0 || fs.Changed("duration") && c.Duration == 0 {
		return nil, usagef("invalid --duration %v: want a positive duration such as 30s", c.Duration)
	}
	for _, ev := range raw.events {
		switch strings.TrimSpace(ev) {
		case "states":
			c.EmitStates = true
		case "drops":
			c.EmitDrops = true
		case "retransmits":
			c.EmitRetrans = true
		case "resets":
			c.EmitResets = true
		default:
			return nil, usagef("invalid --events %q: want states, drops, retransmits and/or resets", ev)
		}
	}
	if c.DropRate, err = strconv.Atoi(strings.TrimSpace(raw.dropRate)); err != nil || c.DropRate < 1 {
		return nil, usagef("invalid --drop-rate %q: want a whole number of records a second, at least 1", raw.dropRate)
	}
	if c.RingSize, err = parseSize(raw.ringSize); err != nil {
		return nil, usagef("invalid --ring-size %q: %v", raw.ringSize, err)
	}
	if c.HookKind != "" && !contains(tracer.HookKinds, c.HookKind) {
		return nil, usagef("invalid --hook-kind %q: want one of %s", c.HookKind, strings.Join(tracer.HookKinds, ", "))
	}
	if raw.unseen != "" {
		if c.UnseenState, err = tcpstate.Parse(raw.unseen); err != nil {
			return nil, usagef("invalid --test-unseen-state: %v", err)
		}
	}
	if c.Comm, err = parseComm(fs, c.Comm); err != nil {
		return nil, err
	}
	return c, nil
}

// parseComm checks --comm: a name given empty (an unset shell variable)
// would match no process, and tcptrace would show nothing, in silence. The
// kernel keeps 15 bytes of a command name: a longer one is cut to match.
func parseComm(fs *pflag.FlagSet, comm string) (string, error) {
	if fs.Changed("comm") && strings.TrimSpace(comm) == "" {
		return "", usagef("invalid --comm %q: want a command name, as ps -o comm shows it", comm)
	}
	if len(comm) > 15 {
		comm = comm[:15]
	}
	return comm, nil
}

// common parses what every subcommand shares: -o, --pid and --port.
func (raw *rawFlags) common() (format output.Format, pids []uint32, ports []uint16, err error) {
	if format, err = output.ParseFormat(raw.output); err != nil {
		return 0, nil, nil, usagef("invalid --output: %v", err)
	}
	if pids, err = parsePIDs(raw.pids); err != nil {
		return 0, nil, nil, err
	}
	ports, err = parsePorts(raw.ports)
	return format, pids, ports, err
}

func parsePIDs(list []string) ([]uint32, error) {
	var out []uint32
	for _, p := range list {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 32)
		if err != nil || n == 0 {
			return nil, usagef("invalid --pid %q: want a process ID", p)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

func parsePorts(list []string) ([]uint16, error) {
	var out []uint16
	for _, p := range list {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil || n == 0 {
			return nil, usagef("invalid --port %q: want a port from 1 to 65535", p)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// parseSize reads a power-of-two byte count with an optional K or M suffix.
func parseSize(s string) (uint32, error) {
	mult := uint64(1)
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1<<20, s[:len(s)-1]
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, errors.New("want a size such as 8M")
	}
	n *= mult
	if n < 4096 || n > 1<<30 || n&(n-1) != 0 {
		return 0, errors.New("want a power of two from 4K to 1024M")
	}
	return uint32(n), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Usage writes the help text.
func Usage(w io.Writer) {
	var c Config
	var raw rawFlags
	fs := newFlagSet(&c, &raw)
	fmt.Fprintf(w, `tcptrace: stream every TCP state change on this host, live, with the process behind it.

Usage: sudo tcptrace [flags]
       sudo tcptrace closewait [flags]   (see tcptrace closewait -h)
       sudo tcptrace listeners [flags]   (see tcptrace listeners -h)
       sudo tcptrace timewait [flags]    (see tcptrace timewait -h)

Flags:
%s
Records go to stdout (text, or one JSON object per line with -o json);
messages and the exit summary go to stderr.
`, fs.FlagUsages())
}

var errHelp = errors.New("help requested")
