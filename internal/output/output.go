// Package output renders stream records as aligned text or JSON lines.
//
// Each record is appended into one reused byte slice with strconv-style
// appends and written to a bufio.Writer, so the hot path does not allocate.
// On a terminal every line is flushed; into a pipe or file the caller flushes
// on its drain timer and at exit.
package output

import (
	"fmt"
	"io"
	"math/bits"
	"net/netip"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/tcptrace/tcptrace/internal/event"
	"github.com/tcptrace/tcptrace/internal/tcpstate"
)

// Format selects the rendering.
type Format int

const (
	Text Format = iota
	JSON
)

// ParseFormat accepts "text" or "json".
func ParseFormat(s string) (Format, error) {
	switch s {
	case "text":
		return Text, nil
	case "json":
		return JSON, nil
	}
	return 0, fmt.Errorf("unknown output format %q (want text or json)", s)
}

const (
	textHeader   = "TIME         PID     COMM            LOCAL                  REMOTE                 OLD          NEW          MS         ERROR          RETRANS\n"
	addrColWidth = 22
)

// recordRoom is more than a record takes (the longest, a drop record with
// IPv6 addresses and an escaped command name, takes about 600 bytes).
const recordRoom = 1024

// blockSize is what a full write writes. Full writes end on multiples of it
// in the output, however the drain timer's partial ones left it: a file
// system that caches files in large folios (ext4, XFS) then fills whole
// ones. Measured on 6.18, ext4: 200 MB in writes of 64 KiB on those
// boundaries took 0.05-0.07 s of system time, in writes of 63 KiB 0.09-0.11.
const blockSize = 64 << 10

// Writer writes records in one format.
type Writer struct {
	out          io.Writer
	buf          []byte // records not written yet: fewer bytes than the next full write
	off          int64  // where the next write lands in the output, as far as known
	format       Format
	lineBuffered bool
	f            Formatter
	header       bool
}

// New returns a Writer on w. lineBuffered flushes after every record (for a
// terminal). Text times are shown in loc (time.Local when nil); JSON times are UTC.
func New(w io.Writer, format Format, lineBuffered bool, loc *time.Location) *Writer {
	if loc == nil {
		loc = time.Local
	}
	var off int64
	if s, ok := w.(io.Seeker); ok {
		off, _ = s.Seek(0, io.SeekCurrent) // a pipe or terminal: 0, and no matter
	}
	return &Writer{
		out:          w,
		buf:          make([]byte, 0, blockSize+recordRoom),
		off:          max(off, 0),
		format:       format,
		lineBuffered: lineBuffered,
		f:            Formatter{loc: loc, owners: new([ownerSlots]ownerJSON), addrs: new([addrSlots]addrText)},
	}
}

// Write renders one record.
func (w *Writer) Write(e *event.Event) error {
	// Formatted straight into the buffer, which has room for one record
	// past a full write: nothing is copied but the few bytes past it.
	b := w.buf
	if w.format == JSON {
		b = w.f.AppendJSON(b, e)
	} else {
		if !w.header {
			w.header = true
			b = append(b, textHeader...)
		}
		b = w.f.AppendText(b, e)
	}
	w.buf = b
	if w.lineBuffered {
		return w.Flush()
	}
	if n := blockSize - int(w.off%blockSize); len(b) >= n {
		err := w.write(b[:n])
		w.buf = b[:copy(b, b[n:])]
		return err
	}
	return nil
}

// Flush writes out buffered records.
func (w *Writer) Flush() error {
	err := w.write(w.buf)
	w.buf = w.buf[:0]
	return err
}

func (w *Writer) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := w.out.Write(p)
	w.off += int64(n)
	return err
}

// Formatter renders records. It formats the date and time up to the second
// once per second and appends only the fraction per record: formatting the
// whole timestamp was a quarter of the cost of a record.
type Formatter struct {
	loc              *time.Location // text times; JSON times are UTC
	jsonSec, textSec int64
	jsonN, textN     int
	jsonPre, textPre [32]byte
	owners           *[ownerSlots]ownerJSON // nil: rendered afresh each time
	addrs            *[addrSlots]addrText   // nil: addresses formatted afresh
	addrNext         int                    // the slot the next new address takes
	netns            uint32                 // the namespace last rendered, in netnsText
	netnsN           int
	netnsText        [10]byte
}

// addrSlots addresses are kept formatted: a stream's sockets share few local
// addresses, and formatting one was a tenth of a text record's cost.
const addrSlots = 4

// addrText is one address as AppendTo formats it.
type addrText struct {
	addr netip.Addr
	n    int
	text [64]byte // an IPv6 address with a zone fits
}

// appendAddr appends a as netip.Addr.AppendTo does, from the cache when f has one.
func (f *Formatter) appendAddr(b []byte, a netip.Addr) []byte {
	if f == nil || f.addrs == nil {
		return a.AppendTo(b)
	}
	for i := range f.addrs {
		if s := &f.addrs[i]; s.n > 0 && s.addr == a {
			return append(b, s.text[:s.n]...)
		}
	}
	start := len(b)
	b = a.AppendTo(b)
	if n := len(b) - start; n > 0 && n <= len(f.addrs[0].text) {
		s := &f.addrs[f.addrNext]
		s.addr, s.n = a, copy(s.text[:], b[start:])
		f.addrNext = (f.addrNext + 1) % addrSlots
	}
	return b
}

// ownerSlots owners' JSON keys are kept rendered: a stream's records come
// from few processes, and the owner keys were a third of a record's cost.
const ownerSlots = 16

// ownerJSON is one owner's rendered keys, from ,"pid" to "owner_exited".
type ownerJSON struct {
	pid, uid uint32
	exited   bool
	comm     [16]byte
	cgroup   string
	json     []byte
}

// AppendText appends one aligned text line for e, with times in loc.
func AppendText(b []byte, e *event.Event, loc *time.Location) []byte {
	f := Formatter{loc: loc}
	return f.AppendText(b, e)
}

// AppendJSON appends one JSON object and a newline for e.
func AppendJSON(b []byte, e *event.Event) []byte {
	var f Formatter
	return f.AppendJSON(b, e)
}

func splitNanos(ns int64) (sec, frac int64) {
	sec, frac = ns/1e9, ns%1e9
	if frac < 0 {
		sec, frac = sec-1, frac+1e9
	}
	return sec, frac
}

// appendDigits appends v as exactly n decimal digits.
func appendDigits(b []byte, v int64, n int) []byte {
	var d [9]byte
	u, i := uint64(v), n   // v >= 0: unsigned division is cheaper
	for ; i >= 2; i -= 2 { // two digits per division: it was a sixth of a text record
		r := u % 100
		u /= 100
		d[i-2], d[i-1] = digitPairs[2*r], digitPairs[2*r+1]
	}
	if i == 1 {
		d[0] = byte('0' + u%10)
	}
	return append(b, d[:n]...)
}

const digitPairs = "00010203040506070809" + "10111213141516171819" + "20212223242526272829" +
	"30313233343536373839" + "40414243444546474849" + "50515253545556575859" +
	"60616263646566676869" + "70717273747576777879" + "80818283848586878889" + "90919293949596979899"

// appendJSONTime appends RFC 3339 UTC with nanoseconds, e.g. 2026-11-21T04:33:18.123456789Z.
func (f *Formatter) appendJSONTime(b []byte, ns int64) []byte {
	sec, frac := splitNanos(ns)
	if f.jsonN == 0 || sec != f.jsonSec {
		f.jsonN = len(time.Unix(sec, 0).UTC().AppendFormat(f.jsonPre[:0], "2006-01-02T15:04:05."))
		f.jsonSec = sec
	}
	b = append(b, f.jsonPre[:f.jsonN]...)
	b = appendDigits(b, frac, 9)
	return append(b, 'Z')
}

// appendTextTime appends local wall time with milliseconds, e.g. 04:33:18.123.
func (f *Formatter) appendTextTime(b []byte, ns int64) []byte {
	sec, frac := splitNanos(ns)
	if f.textN == 0 || sec != f.textSec {
		loc := f.loc
		if loc == nil {
			loc = time.Local
		}
		f.textN = len(time.Unix(sec, 0).In(loc).AppendFormat(f.textPre[:0], "15:04:05."))
		f.textSec = sec
	}
	b = append(b, f.textPre[:f.textN]...)
	return appendDigits(b, frac/1e6, 3)
}

// AppendText appends one aligned text line for e.
func (f *Formatter) AppendText(b []byte, e *event.Event) []byte {
	b = f.appendTextTime(b, e.Time)
	b = append(b, ' ')
	switch e.Kind {
	case event.KindLost:
		return appendCountText(b, "LOST ", e.Lost, " records: the ring buffer was full\n")
	case event.KindGaps:
		return appendCountText(b, "GAPS ", e.Lost,
			" sockets changed state unseen: the kernel ran no tracepoint program for some of their changes\n")
	}
	if e.Kind == event.KindDrop {
		return appendDropText(b, e)
	}
	if e.Kind == event.KindSynFlood {
		return appendFloodText(b, e)
	}
	stuck := e.Kind == event.KindCloseWaitStuck
	start := len(b)
	if e.OwnerKnown() {
		b = appendUint(b, uint64(e.PID))
		b = padTo(b, start, 8)
		start = len(b)
		b = AppendPrintable(b, e.CommBytes())
	} else {
		b = append(b, '-')
		b = padTo(b, start, 8)
		start = len(b)
		b = append(b, '?')
	}
	b = padTo(b, start, 16)
	start = len(b)
	b = appendAddrPort(b, f, e.LAddr, e.Family, e.LPort)
	b = padTo(b, start, addrColWidth+1)
	start = len(b)
	b = appendAddrPort(b, f, e.RAddr, e.Family, e.RPort)
	b = padTo(b, start, addrColWidth+1)
	start = len(b)
	if e.Kind == event.KindReset && e.OldState == 0 {
		b = append(b, '-') // no socket sent it
	} else {
		b = append(b, e.OldState.String()...)
	}
	b = padTo(b, start, 13)
	start = len(b)
	if stuck {
		b = append(b, "STUCK"...)
	} else if e.Kind == event.KindRetrans {
		b = append(b, "RETRANS"...) // OLD holds the state it was in
	} else if e.Kind == event.KindReset {
		b = append(b, "RESET"...) // OLD holds the state it was in
	} else {
		b = append(b, e.Into().String()...)
	}
	b = padTo(b, start, 13)
	start = len(b)
	switch {
	case stuck && !e.InStateKnown:
		b = append(b, ">="...) // a lower bound
		b = appendMillis(b, e.InState)
	case e.InStateKnown:
		b = appendMillis(b, e.InState)
	default:
		b = append(b, '-')
	}
	// A reset names its reason under ERROR, when the kernel gives one.
	if e.Kind == event.KindReset {
		if e.ResetReason != "" {
			b = padTo(b, start, 11)
			b = append(b, e.ResetReason...)
		}
		return append(b, '\n')
	}
	// A close with an error or retransmissions, and a retransmission, say so
	// in two more columns, ERROR ("-" for none) and RETRANS; other lines end
	// at MS.
	retrans := e.Retrans != 0 && (e.Kind == event.KindRetrans || !stuck && e.NewState == tcpstate.Close)
	if e.Error != 0 || retrans {
		b = padTo(b, start, 11)
		start = len(b)
		if e.Error != 0 {
			b = appendErrno(b, e.Error)
		} else {
			b = append(b, '-')
		}
		if retrans {
			b = padTo(b, start, 15)
			b = appendUint(b, uint64(e.Retrans))
		}
	}
	return append(b, '\n')
}

// appendErrno appends the errno's name as the C library spells it
// (ECONNRESET), which is what applications log.
func appendErrno(b []byte, err syscall.Errno) []byte {
	if name := unix.ErrnoName(err); name != "" {
		return append(b, name...)
	}
	b = append(b, "errno "...)
	return appendUint(b, uint64(err))
}

// appendMillis appends d in milliseconds with three decimals, rounded to the
// nearest microsecond (integer arithmetic: a float conversion cost a fifth
// of a record).
func appendMillis(b []byte, d time.Duration) []byte {
	if d < 0 {
		b = append(b, '-')
		d = -d
	}
	us := (int64(d) + 500) / 1000
	b = appendUint(b, uint64(us/1000))
	b = append(b, '.')
	return appendDigits(b, us%1000, 3)
}

// padTo appends spaces until the column that began at start is width wide
// (at least one space follows the value).
func padTo(b []byte, start, width int) []byte {
	n := width - (len(b) - start)
	if n < 1 {
		n = 1
	}
	for n > len(spaces) {
		b = append(b, spaces...)
		n -= len(spaces)
	}
	// One copy, not a byte at a time: padding was a fifth of a text record.
	return append(b, spaces[:n]...)
}

const spaces = "                                                                " // 64

// appendAddrPort appends addr:port ([addr]:port for IPv6); fm may be nil.
func appendAddrPort(b []byte, fm *Formatter, addr netip.Addr, f event.Family, port uint16) []byte {
	if f == event.IPv6 {
		b = append(b, '[')
		b = fm.appendAddr(b, addr)
		b = append(b, ']')
	} else {
		b = fm.appendAddr(b, addr)
	}
	b = append(b, ':')
	return appendUint(b, uint64(port))
}

// AppendPrintable copies a command name, replacing control bytes so that a
// hostile comm cannot move the terminal cursor.
func AppendPrintable(b, s []byte) []byte {
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		b = append(b, c)
	}
	return b
}

// appendCountText appends a count record's text: pre, the count, post.
func appendCountText(b []byte, pre string, n uint64, post string) []byte {
	b = append(b, pre...)
	b = appendUint(b, n)
	return append(b, post...)
}

// appendCountJSON appends a count record (lost, gaps) of type typ.
func (f *Formatter) appendCountJSON(b []byte, typ string, e *event.Event) []byte {
	b = append(b, `{"type":"`...)
	b = append(b, typ...)
	b = append(b, `","time":"`...)
	b = f.appendJSONTime(b, e.Time)
	b = append(b, `","count":`...)
	b = appendUint(b, e.Lost)
	return append(b, "}\n"...)
}

// AppendJSON appends one JSON object and a newline for e.
func (f *Formatter) AppendJSON(b []byte, e *event.Event) []byte {
	switch e.Kind {
	case event.KindLost:
		return f.appendCountJSON(b, "lost", e)
	case event.KindGaps:
		return f.appendCountJSON(b, "gaps", e)
	}
	if e.Kind == event.KindDrop {
		return f.appendDropJSON(b, e)
	}
	if e.Kind == event.KindSynFlood {
		return f.appendFloodJSON(b, e)
	}
	switch e.Kind {
	case event.KindCloseWaitStuck:
		b = append(b, `{"type":"close_wait_stuck","time":"`...)
	case event.KindRetrans:
		b = append(b, `{"type":"retransmit","time":"`...)
	case event.KindReset:
		b = append(b, `{"type":"reset","time":"`...)
	default:
		b = append(b, `{"type":"state","time":"`...)
	}
	b = f.appendJSONTime(b, e.Time)
	b = append(b, '"')
	b = f.appendPIDAndOwner(b, e)
	b = f.appendLocal(b, e)
	b = append(b, `,"raddr":"`...)
	b = f.appendAddr(b, e.RAddr)
	b = append(b, `","rport":`...)
	b = appendUint(b, uint64(e.RPort))
	switch e.Kind {
	case event.KindRetrans:
		b = append(b, `,"state":"`...)
		b = append(b, e.OldState.String()...)
		b = append(b, `","retrans":`...)
		b = appendUint(b, uint64(e.Retrans))
	case event.KindReset:
		b = appendNullable(b, `,"state":`, e.OldState != 0, e.OldState.String())
		b = appendNullable(b, `,"reason":`, e.ResetReason != "", e.ResetReason)
	case event.KindCloseWaitStuck:
		// How long it has sat in CLOSE_WAIT: exact, or a lower bound.
		secs := float64(e.InState) / float64(time.Second)
		if e.InStateKnown {
			b = append(b, `,"age_seconds":`...)
			b = strconv.AppendFloat(b, secs, 'f', 3, 64)
		} else {
			b = append(b, `,"age_seconds":null,"age_at_least_seconds":`...)
			b = strconv.AppendFloat(b, secs, 'f', 3, 64)
		}
	default:
		b = append(b, `,"old_state":"`...)
		b = append(b, e.OldState.String()...)
		b = append(b, `","new_state":"`...)
		b = append(b, e.NewState.String()...)
		b = append(b, '"')
		// How the socket ended: on changes into CLOSE only.
		if e.NewState == tcpstate.Close {
			b = append(b, `,"time_wait":`...)
			b = strconv.AppendBool(b, e.TimeWait)
			if e.Error != 0 {
				b = append(b, `,"error":"`...)
				b = appendErrno(b, e.Error)
				b = append(b, '"')
			} else {
				b = append(b, `,"error":null`...)
			}
			b = append(b, `,"retrans":`...)
			b = appendUint(b, uint64(e.Retrans))
		}
		b = append(b, `,"in_state_ms":`...)
		if e.InStateKnown {
			b = appendMillis(b, e.InState)
		} else {
			b = append(b, "null"...)
		}
	}
	return f.appendSocketTail(b, e)
}

// appendDropText writes a line that stands out in the stream, e.g.
// "DROP accept queue full (129/128) 10.0.0.5:3000 <- 10.0.0.9:51234 node 4242".
func appendDropText(b []byte, e *event.Event) []byte {
	d := &e.Drop
	b = append(b, "DROP "...)
	if d.Count != 1 {
		b = appendUint(b, d.Count)
		b = append(b, "x "...)
	}
	for _, c := range []byte(d.Reason) {
		if c == '_' {
			c = ' '
		}
		b = append(b, c)
	}
	if d.Other {
		b = append(b, ' ') // no listener: no queues to show
	} else {
		b = appendQueuesText(b, d)
	}
	b = appendAddrPort(b, nil, e.LAddr, e.Family, e.LPort)
	b = append(b, " <- "...)
	switch {
	case d.ClientKnown:
		f := e.Family
		if e.RAddr.Is4() {
			f = event.IPv4 // an IPv4 client of a dual-stack listener
		}
		b = appendAddrPort(b, nil, e.RAddr, f, e.RPort)
	case len(d.TopClients) > 0:
		for i, c := range d.TopClients {
			if i > 0 {
				b = append(b, ',')
			}
			b = c.Addr.AppendTo(b)
			b = append(b, '(')
			b = appendUint(b, c.Count)
			b = append(b, ')')
		}
	default:
		b = append(b, '?')
	}
	return appendOwnerText(b, e)
}

// appendQueuesText appends " (backlog/max, syn queue n) ".
func appendQueuesText(b []byte, d *event.Drop) []byte {
	b = append(b, " ("...)
	b = appendUint(b, uint64(d.Backlog))
	b = append(b, '/')
	b = appendUint(b, uint64(d.MaxBacklog))
	b = append(b, ", syn queue "...)
	b = appendUint(b, uint64(d.SynQueue))
	return append(b, ") "...)
}

// appendOwnerText ends a listener's line with " comm pid" (" ? -" unknown).
func appendOwnerText(b []byte, e *event.Event) []byte {
	b = append(b, ' ')
	if e.OwnerKnown() {
		b = AppendPrintable(b, e.CommBytes())
		b = append(b, ' ')
		b = appendUint(b, uint64(e.PID))
	} else {
		b = append(b, "? -"...)
	}
	return append(b, '\n')
}

// appendFloodText writes the kernel's SYN-flood flag on a listener, e.g.
// "SYN FLOOD (0/4, syn queue 4) 127.0.0.1:7074 sending cookies node 4242".
func appendFloodText(b []byte, e *event.Event) []byte {
	d := &e.Drop
	b = append(b, "SYN FLOOD"...)
	b = appendQueuesText(b, d)
	b = appendAddrPort(b, nil, e.LAddr, e.Family, e.LPort)
	if d.Syncookies != 0 {
		b = append(b, " sending cookies"...)
	} else {
		b = append(b, " dropping SYNs (tcp_syncookies=0)"...)
	}
	if d.FloodBefore {
		b = append(b, " (flagged before tcptrace started)"...)
	}
	return appendOwnerText(b, e)
}

// appendFloodJSON writes the kernel's SYN-flood flag on a listener: action
// "cookies" (SYNs past the full queue answered with syncookies) or "drop".
func (f *Formatter) appendFloodJSON(b []byte, e *event.Event) []byte {
	d := &e.Drop
	b = append(b, `{"type":"syn_flood","time":"`...)
	b = f.appendJSONTime(b, e.Time)
	b = append(b, '"')
	b = f.appendPIDAndOwner(b, e)
	b = f.appendLocal(b, e)
	b = appendQueuesJSON(b, d)
	b = append(b, `,"syncookies":`...)
	b = appendUint(b, uint64(d.Syncookies))
	if d.Syncookies != 0 {
		b = append(b, `,"action":"cookies"`...)
	} else {
		b = append(b, `,"action":"drop"`...)
	}
	b = append(b, `,"before_start":`...)
	b = strconv.AppendBool(b, d.FloodBefore)
	return f.appendSocketTail(b, e)
}

// appendDropJSON writes a drop record; raddr and rport are null when the
// kernel path did not show the client.
func (f *Formatter) appendDropJSON(b []byte, e *event.Event) []byte {
	d := &e.Drop
	b = append(b, `{"type":"drop","time":"`...)
	b = f.appendJSONTime(b, e.Time)
	b = append(b, `","reason":"`...)
	b = append(b, d.Reason...)
	b = append(b, `","kernel_reason":`...)
	if d.KernelReason != "" {
		b = AppendJSONString(b, []byte(d.KernelReason))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"count":`...)
	b = appendUint(b, d.Count)
	b = f.appendPIDAndOwner(b, e)
	b = f.appendLocal(b, e)
	if d.ClientKnown {
		b = append(b, `,"raddr":"`...)
		b = e.RAddr.AppendTo(b)
		b = append(b, `","rport":`...)
		b = appendUint(b, uint64(e.RPort))
	} else {
		b = append(b, `,"raddr":null,"rport":null`...)
	}
	if d.Other {
		b = append(b, `,"backlog":null,"max_backlog":null,"syn_queue":null`...)
	} else {
		b = appendQueuesJSON(b, d)
	}
	if d.TopClients != nil {
		b = append(b, `,"top_clients":[`...)
		for i, c := range d.TopClients {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"raddr":"`...)
			b = c.Addr.AppendTo(b)
			b = append(b, `","count":`...)
			b = appendUint(b, c.Count)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return f.appendSocketTail(b, e)
}

// appendQueuesJSON appends a listener's queue keys.
func appendQueuesJSON(b []byte, d *event.Drop) []byte {
	b = append(b, `,"backlog":`...)
	b = appendUint(b, uint64(d.Backlog))
	b = append(b, `,"max_backlog":`...)
	b = appendUint(b, uint64(d.MaxBacklog))
	b = append(b, `,"syn_queue":`...)
	return appendUint(b, uint64(d.SynQueue))
}

// appendLocal appends the family and the local address and port.
func (f *Formatter) appendLocal(b []byte, e *event.Event) []byte {
	b = append(b, `,"family":"`...)
	b = append(b, e.Family.String()...)
	b = append(b, `","laddr":"`...)
	b = f.appendAddr(b, e.LAddr)
	b = append(b, `","lport":`...)
	return appendUint(b, uint64(e.LPort))
}

// appendSocketTail closes a record with the socket's namespace and identity.
func (f *Formatter) appendSocketTail(b []byte, e *event.Event) []byte {
	b = append(b, `,"netns":`...)
	if f.netnsN == 0 || f.netns != e.NetNS { // a stream's events mostly share one
		f.netns = e.NetNS
		f.netnsN = len(strconv.AppendUint(f.netnsText[:0], uint64(e.NetNS), 10))
	}
	b = append(b, f.netnsText[:f.netnsN]...)
	if e.Sock == 0 && e.Kind == event.KindReset { // sent without a socket
		return append(b, `,"sock":null}`+"\n"...)
	}
	b = append(b, `,"sock":"`...)
	b = appendHex(b, e.Sock)
	return append(b, "\"}\n"...)
}

// appendNullable appends key and then value as a JSON string, or null when
// it has none.
func appendNullable(b []byte, key string, has bool, value string) []byte {
	b = append(b, key...)
	if !has {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = append(b, value...)
	return append(b, '"')
}

// appendUint appends v as strconv.AppendUint(b, v, 10) does, two digits
// per division and without its layers of calls. (appendDigits' loop again:
// one helper for both cost a JSON record ~20 ns in the benchmark.)
func appendUint(b []byte, v uint64) []byte {
	var d [20]byte
	i := len(d)
	for v >= 100 {
		r := v % 100
		v /= 100
		i -= 2
		d[i], d[i+1] = digitPairs[2*r], digitPairs[2*r+1]
	}
	if v >= 10 {
		i -= 2
		d[i], d[i+1] = digitPairs[2*v], digitPairs[2*v+1]
	} else {
		i--
		d[i] = byte('0' + v)
	}
	return append(b, d[i:]...)
}

// appendHex appends v as strconv.AppendUint(b, v, 16) does, a digit per
// shift: the generic conversion was a twentieth of a JSON record's cost.
func appendHex(b []byte, v uint64) []byte {
	const hexDigits = "0123456789abcdef"
	n := max(1, (67-bits.LeadingZeros64(v))/4)
	var d [16]byte
	for i := n - 1; i >= 0; i-- {
		d[i] = hexDigits[v&15]
		v >>= 4
	}
	return append(b, d[:n]...)
}

// appendPIDAndOwner appends pid, comm and the owner keys, rendered once per
// owner while it stays in its cache slot.
func (f *Formatter) appendPIDAndOwner(b []byte, e *event.Event) []byte {
	if f.owners == nil || e.PIDs != nil && (len(e.PIDs) != 1 || e.PIDs[0] != e.PID) {
		return appendPIDAndOwner(b, e) // shared sockets are rare: not cached
	}
	o := &f.owners[e.PID%ownerSlots]
	if o.json == nil || o.pid != e.PID || o.uid != e.UID || o.exited != e.OwnerExited ||
		o.comm != e.Comm || o.cgroup != e.CgroupPath {
		o.pid, o.uid, o.exited, o.comm, o.cgroup = e.PID, e.UID, e.OwnerExited, e.Comm, e.CgroupPath
		o.json = appendPIDAndOwner(o.json[:0], e)
	}
	return append(b, o.json...)
}

// appendPIDAndOwner appends pid, comm and the owner keys.
func appendPIDAndOwner(b []byte, e *event.Event) []byte {
	b = append(b, `,"pid":`...)
	b = appendUint(b, uint64(e.PID))
	b = append(b, `,"comm":`...)
	b = AppendJSONString(b, e.CommBytes())
	return appendOwner(b, e)
}

// appendOwner appends the owner keys after pid and comm: every holder, the
// uid and cgroup (null when no owner is known), and whether it has exited.
func appendOwner(b []byte, e *event.Event) []byte {
	b = append(b, `,"pids":[`...)
	switch {
	case !e.OwnerKnown():
	case e.PIDs == nil:
		b = appendUint(b, uint64(e.PID))
	default:
		for i, p := range e.PIDs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendUint(b, uint64(p))
		}
	}
	if !e.OwnerKnown() {
		return append(b, `],"uid":null,"cgroup":null,"owner_exited":false`...)
	}
	b = append(b, `],"uid":`...)
	b = appendUint(b, uint64(e.UID))
	b = append(b, `,"cgroup":`...)
	if e.CgroupPath == "" {
		b = append(b, "null"...)
	} else {
		b = AppendJSONString(b, []byte(e.CgroupPath))
	}
	b = append(b, `,"owner_exited":`...)
	return strconv.AppendBool(b, e.OwnerExited)
}

const hex = "0123456789abcdef"

// AppendJSONString appends s as a quoted JSON string; invalid UTF-8 becomes U+FFFD.
func AppendJSONString(b, s []byte) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
