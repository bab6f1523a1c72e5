package tracer

import (
	"errors"
	"strings"
	"testing"
)

func TestFuncRangeIn(t *testing.T) {
	const syms = `ffffffff82079ed0 T tcp_conn_request
ffffffff82078840 T tcp_rcv_state_process
ffffffff82077000 t tcp_ack
ffffffff8207a000 T tcp_other
ffffffffc0001000 t helper	[somemod]
`
	lo, hi, err := funcRangeIn(strings.NewReader(syms), "tcp_rcv_state_process")
	if err != nil || lo != 0xffffffff82078840 || hi != 0xffffffff82079ed0 {
		t.Errorf("got %#x-%#x, %v; want 0xffffffff82078840-0xffffffff82079ed0", lo, hi, err)
	}
	// The next symbol may come later in the file too.
	lo, hi, err = funcRangeIn(strings.NewReader(syms), "tcp_conn_request")
	if err != nil || lo != 0xffffffff82079ed0 || hi != 0xffffffff8207a000 {
		t.Errorf("got %#x-%#x, %v; want 0xffffffff82079ed0-0xffffffff8207a000", lo, hi, err)
	}
	if _, _, err := funcRangeIn(strings.NewReader(syms), "tcp_missing"); err == nil {
		t.Error("a missing function: no error")
	}
	// A module's symbol of the same name is not the kernel's function.
	if _, _, err := funcRangeIn(strings.NewReader(syms), "helper"); err == nil {
		t.Error("a module's symbol: no error")
	}
	hidden := "0000000000000000 T tcp_rcv_state_process\n0000000000000000 T tcp_conn_request\n"
	if _, _, err := funcRangeIn(strings.NewReader(hidden), "tcp_rcv_state_process"); !errors.Is(err, errHiddenAddrs) {
		t.Errorf("hidden addresses: %v, want errHiddenAddrs", err)
	}
	// The last symbol has no end.
	if _, _, err := funcRangeIn(strings.NewReader(syms), "tcp_other"); err == nil {
		t.Error("no symbol above: no error")
	}
}
