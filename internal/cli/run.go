package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/cgroup"
	"github.com/tcptrace/tcptrace/internal/closewait"
	"github.com/tcptrace/tcptrace/internal/dropfold"
	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/latency"
	"github.com/tcptrace/tcptrace/internal/listendrops"
	"github.com/tcptrace/tcptrace/internal/output"
	"github.com/tcptrace/tcptrace/internal/owner"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
	"github.com/tcptrace/tcptrace/internal/tracer"
)

// version is set at build time with -ldflags "-X .../internal/cli.version=v1.2.3".
var version = ""

// Version returns the build's version.
func Version() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// drainEvery bounds how long a record waits in the ring buffer when the
// kernel skipped the wake-up: the stream's latency budget.
const drainEvery = 20 * time.Millisecond

// listenerPollEvery is how often listeners' drop counters are read: SYNs
// dropped for a full queue fire no tracepoint, so their records come up to
// this late. (Their counts and causes are checked against the namespace's
// counters, so a slower walk loses no accuracy.) The walk visits every
// bucket of a 16384-entry map, listeners or not: every 100 ms it was a fifth
// of an idle tracer's CPU and 5% of a busy one's. A costly walk widens the
// interval.
const listenerPollEvery = 250 * time.Millisecond

// Run parses args and streams until ctx ends, --duration passes, or an error.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "closewait":
			return runCloseWait(ctx, args[1:], stdout, stderr)
		case "listeners":
			return runListeners(ctx, args[1:], stdout, stderr)
		case "timewait":
			return runTimeWait(ctx, args[1:], stdout, stderr)
		}
	}
	cfg, err := Parse(args)
	if err != nil {
		return err
	}
	switch {
	case cfg.Help:
		Usage(stdout)
		return nil
	case cfg.Version:
		fmt.Fprintf(stdout, "tcptrace %s\n", Version())
		return nil
	}
	if cfg.PIDs, err = checkPIDs("/proc", cfg.PIDs, stderr); err != nil {
		return err
	}
	// The alert needs every move into and out of CLOSE_WAIT, whatever --state
	// and --errors ask for; the pipeline then shows only what they asked for.
	stateMask, oldMask, errorsOnly := cfg.StateMask(), uint32(0), cfg.ErrorsOnly
	if cfg.CloseWaitAlert > 0 && (stateMask != 0 || errorsOnly) {
		if stateMask == 0 {
			stateMask = 1 << tcpstate.Close
		}
		stateMask |= 1 << tcpstate.CloseWait
		oldMask = 1 << tcpstate.CloseWait
		errorsOnly = false
	}
	tr, err := openTracer(tracer.Options{
		StateMask:    stateMask,
		OldStateMask: oldMask,
		ErrorsOnly:   errorsOnly,
		Family:       cfg.Family,
		PIDs:         cfg.PIDs,
		Ports:        cfg.Ports,
		RingBytes:    cfg.RingSize,
		HookKind:     cfg.HookKind,
		MountTracefs: !cfg.NoMountTracefs,
		EmitStates:   cfg.EmitStates,
		EmitDrops:    cfg.EmitDrops,
		EmitRetrans:  cfg.EmitRetrans,
		EmitResets:   cfg.EmitResets,
		UnseenState:  uint8(cfg.UnseenState),
		Without:      cfg.Without,
	}, cfg.Verbose, stderr)
	if err != nil {
		return err
	}
	defer tr.Close()
	// The first walk takes each listener's drop counter as its starting point.
	if err := tr.PollListeners(nil); err != nil && !errors.Is(err, tracer.ErrNoListenerWalk) {
		return err
	}
	owners := owner.NewResolver(tr, cgroup.NewNames())
	start, startMono := time.Now(), tracer.Mono()
	if err := owners.Snapshot(startMono); err != nil && !errors.Is(err, tracer.ErrNoScan) {
		return fmt.Errorf("snapshot socket owners: %w", err)
	}
	if cfg.Verbose {
		fmt.Fprintf(stderr, "tcptrace: owner snapshot: %d sockets in %v\n", owners.Tracked(), time.Since(start).Round(time.Millisecond))
	}
	tracing := "TCP state changes via " + tr.ActiveHook("state changes")
	if h := tr.ActiveHook("retransmits"); h != "" {
		tracing += ", retransmits via " + h
	}
	if h := tr.ActiveHook("resets"); h != "" {
		tracing += ", resets sent via " + h
	}
	fmt.Fprintf(stderr, "tcptrace: tracing %s; Ctrl-C to stop\n", tracing)

	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	p := &pipeline{
		out:        output.New(stdout, cfg.Output, isTerminal(stdout), nil),
		owners:     owners,
		comm:       cfg.Comm,
		pids:       cfg.PIDs,
		stateMask:  cfg.StateMask(),
		errorsOnly: cfg.ErrorsOnly,
	}
	if cfg.Verbose {
		p.ages = new(latency.Histogram)
		p.timeBase, p.monoBase = time.Now(), tracer.Mono()
	}
	if cfg.CloseWaitAlert > 0 {
		p.stuck = closewait.NewStuck(cfg.CloseWaitAlert)
		owners.EachHolder(func(h *owner.Holder) {
			if p.wantedHolder(h, cfg) {
				p.stuck.Seed(h, startMono)
			}
		})
	}
	var pollEvery time.Duration
	if cfg.EmitDrops {
		pollEvery = listenerPollEvery
		p.folder = dropfold.New(cfg.DropRate)
		p.limit = listendrops.New(listendrops.ProcReader)
		owners.EachHolder(func(h *owner.Holder) {
			if h.State == tcpstate.Listen {
				p.limit.Start(h.NetNS, h.PID)
			}
		})
		p.limit.Start(uint32(selfNetNS()), uint32(os.Getpid()))
	}
	st, err := tr.RunPolling(ctx, drainEvery, pollEvery, p)
	if err == nil && p.folder != nil {
		if err = p.folder.Flush(0, true, p.out.Write); err == nil {
			err = p.out.Flush()
		}
	}
	if cerr := tr.Close(); err == nil {
		err = cerr
	}
	fmt.Fprintf(stderr, "tcptrace: %d events, %d lost, %d sockets with gaps\n", st.Events-p.dropped, st.Lost, st.Gaps)
	if cfg.Verbose {
		fmt.Fprintf(stderr, "tcptrace: nested state changes: %d skipped by the kernel, %d of them recorded by the catch program\n",
			st.Nested, st.Caught)
		fmt.Fprintf(stderr, "tcptrace: closed socket sweep: %d walks, %d left out (no socket closed since the walk before)\n",
			st.Sweeps, st.SweepsSkipped)
		if n := tr.OfflineCPUs(); n > 0 {
			fmt.Fprintf(stderr, "tcptrace: spare ring of %s: %d records (from CPUs brought online since)\n",
				tracer.OfflineText(n), st.Spare)
		}
		fmt.Fprintf(stderr, "tcptrace: owner cache: %d sockets after %d scans (%d failed)\n",
			owners.Tracked(), owners.Scans, owners.ScanErrs)
		fmt.Fprintf(stderr, "tcptrace: event age at write: p50 <= %v, p99 <= %v, max <= %v (%d events)\n",
			p.ages.Quantile(0.5), p.ages.Quantile(0.99), p.ages.Quantile(1), p.ages.Count())
	}
	return err
}

// openTracer checks privileges, loads and attaches everything, and with
// verbose says which hook serves each feature.
func openTracer(opts tracer.Options, verbose bool, stderr io.Writer) (*tracer.Tracer, error) {
	if err := checkPrivileges(); err != nil {
		return nil, err
	}
	// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones need nothing.
	if err := rlimit.RemoveMemlock(); err != nil {
		fmt.Fprintf(stderr, "tcptrace: warning: could not raise RLIMIT_MEMLOCK: %v\n", err)
	}
	tr, err := tracer.New(opts)
	if err != nil {
		return nil, err
	}
	if verbose {
		for _, h := range tr.Hooks() {
			fmt.Fprintf(stderr, "tcptrace: hook: %s\n", h)
		}
	}
	return tr, nil
}

// pipeline carries each record from decode to output: owner enrichment,
// then the filters the kernel could not apply, then formatting.
type pipeline struct {
	out        *output.Writer
	owners     *owner.Resolver
	stuck      *closewait.Stuck // --close-wait-alert
	folder     *dropfold.Folder // --drop-rate
	limit      *listendrops.Limiter
	comm       string
	pids       []uint32
	stateMask  uint32             // --state, when the kernel lets more through for the alert
	errorsOnly bool               // --errors, likewise
	ages       *latency.Histogram // with -v: how old each state change is when written
	timeBase   time.Time          // with monoBase: CLOCK_MONOTONIC now, from Go's monotonic clock
	monoBase   uint64
	ageNow     uint64 // CLOCK_MONOTONIC as last read for ages
	ageRecs    uint64 // records aged since the drain began
	dropped    uint64 // filtered out here
}

func (p *pipeline) Record(e *event.Event) error {
	if e.Kind == event.KindDrop || e.Kind == event.KindSynFlood {
		if p.owners != nil {
			p.owners.Enrich(e, tracer.Mono)
		}
		// Every drop goes past the namespace's counters, filtered or not
		// (a SYN-flood flag is no drop: nothing to count, nothing to fold).
		if p.limit != nil && e.Kind == event.KindDrop {
			return p.limit.Apply(e, p.writeDrop)
		}
		return p.writeDrop(e)
	}
	if e.Kind == event.KindState || e.Kind == event.KindRetrans || e.Kind == event.KindReset {
		if p.owners != nil {
			p.owners.Enrich(e, tracer.Mono)
		}
		if !p.wanted(e) {
			p.dropped++
			return nil
		}
		if p.stuck != nil && e.Kind == event.KindState {
			p.stuck.Observe(e)
			if p.stateMask != 0 && p.stateMask&(1<<e.NewState|1<<e.Into()) == 0 || p.errorsOnly && e.Error == 0 {
				p.dropped++
				return nil
			}
		}
	}
	if p.ages != nil && e.Kind == event.KindState {
		// The clock is read once per 64 records (and per drain): a read per
		// record was a tenth of the tracer's CPU under -v, and the records
		// between two reads are written within microseconds.
		if p.ageRecs%64 == 0 || e.Mono > p.ageNow {
			p.ageNow = p.monoBase + uint64(time.Since(p.timeBase))
		}
		p.ageRecs++
		p.ages.Add(time.Duration(p.ageNow - min(e.Mono, p.ageNow)))
	}
	return p.out.Write(e)
}

func (p *pipeline) writeDrop(e *event.Event) error {
	if !p.wanted(e) || (p.folder != nil && !p.folder.Take(e)) {
		return nil
	}
	return p.out.Write(e)
}

// wantedHolder applies the stream's filters to a socket from the snapshot.
func (p *pipeline) wantedHolder(h *owner.Holder, cfg *Config) bool {
	e := event.Event{PID: h.PID, Comm: h.Comm}
	if !p.wanted(&e) || cfg.Family != 0 && (cfg.Family == 6) != (h.Family == event.IPv6) {
		return false
	}
	return len(cfg.Ports) == 0 || slices.Contains(cfg.Ports, h.LPort) || slices.Contains(cfg.Ports, h.RPort)
}

// wanted applies --comm, and --pid to owners the kernel could not vouch for
// (for the others the kernel has already applied it).
func (p *pipeline) wanted(e *event.Event) bool {
	if p.comm != "" && string(e.CommBytes()) != p.comm {
		return false
	}
	if len(p.pids) == 0 {
		return true
	}
	if slices.Contains(p.pids, e.PID) {
		return true
	}
	for _, pid := range e.PIDs {
		if slices.Contains(p.pids, pid) {
			return true
		}
	}
	return false
}

func (p *pipeline) Idle() error {
	p.ageRecs = 0 // the next drain reads the clock afresh
	if p.limit != nil {
		p.limit.Tick()
	}
	if p.folder != nil {
		if err := p.folder.Flush(tracer.Mono(), false, p.out.Write); err != nil {
			return err
		}
	}
	if p.stuck != nil {
		if err := p.stuck.Due(tracer.Mono(), tracer.WallOffset(), p.out.Write); err != nil {
			return err
		}
	}
	return p.out.Flush()
}

// selfNetNS is the inode of tcptrace's own network namespace.
func selfNetNS() uint64 {
	var st unix.Stat_t
	if unix.Stat("/proc/self/ns/net", &st) != nil {
		return 0
	}
	return st.Ino
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// checkPrivileges fails early, with what to do, when BPF would be refused.
func checkPrivileges() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil // let the kernel decide
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) || (has(unix.CAP_BPF) && has(unix.CAP_PERFMON)) {
		return nil
	}
	return tracer.ErrPermission
}

// ExitCode prints err as one line on stderr and returns the process exit code:
// 0 for success, 2 for a bad command line, 1 for anything else.
func ExitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "tcptrace: %v (see tcptrace --help)\n", err)
		return 2
	}
	fmt.Fprintf(stderr, "tcptrace: %v\n", err)
	return 1
}
