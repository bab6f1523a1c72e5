package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// runFloor attaches the least a tracer of state changes can be to the hook
// tcptrace uses (tp_btf/inet_sock_set_state) and holds it until SIGINT or
// SIGTERM, so the benchmark can measure what the hook itself costs the
// workload on this machine: the floor under any tracer's share of the
// untraced rate.
//
//	-mode hook     a program that returns at once (the price of the call)
//	-mode record   a program that writes a 24-byte record (old and new state,
//	               time) to a ring buffer without a wake-up, and a reader
//	               draining it every 5 ms, as tcptrace does
//
// It prints "floor: attached mode=M" once attached, and at exit
// "floor: records=N" (record mode: records read; lost reservations).
func runFloor(args []string) error {
	fs := flag.NewFlagSet("tcpstorm floor", flag.ExitOnError)
	mode := fs.String("mode", "hook", "hook (an empty program) or record (a record per change, drained every 5 ms)")
	fs.Parse(args)
	if *mode != "hook" && *mode != "record" {
		return fmt.Errorf("unknown -mode %q (want hook or record)", *mode)
	}

	var rb *ebpf.Map
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	if *mode == "record" {
		var err error
		rb, err = ebpf.NewMap(&ebpf.MapSpec{Name: "floor_rb", Type: ebpf.RingBuf, MaxEntries: 16 << 20})
		if err != nil {
			return fmt.Errorf("ring buffer: %w", err)
		}
		defer rb.Close()
		insns = recordInsns(rb)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "floor",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     "inet_sock_set_state",
		License:      "Dual BSD/GPL",
		Instructions: insns,
	})
	if err != nil {
		return fmt.Errorf("load tp_btf/inet_sock_set_state: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach tp_btf/inet_sock_set_state: %w", err)
	}
	defer l.Close()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	fmt.Printf("floor: attached mode=%s\n", *mode)
	if rb == nil {
		<-stop
		return nil
	}

	rd, err := ringbuf.NewReader(rb)
	if err != nil {
		return fmt.Errorf("ring buffer reader: %w", err)
	}
	defer rd.Close()
	var (
		rec ringbuf.Record
		n   int
	)
	for {
		select {
		case <-stop:
			fmt.Printf("floor: records=%d\n", n)
			return nil
		default:
		}
		// As tcptrace's reader: no wake-ups from the kernel; drain what
		// is there, then yield for 5 ms.
		rd.SetDeadline(time.Now())
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				return fmt.Errorf("read: %w", err)
			}
			n++
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recordInsns: rec = bpf_ringbuf_reserve(rb, 24, 0); if rec { rec[0] =
// oldstate, rec[8] = newstate, rec[16] = bpf_ktime_get_ns();
// bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP) }. The tp_btf context is the
// tracepoint's arguments as u64s: sk, oldstate, newstate.
func recordInsns(rb *ebpf.Map) asm.Instructions {
	const noWakeup = 1 // BPF_RB_NO_WAKEUP
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1), // ctx
		asm.LoadMapPtr(asm.R1, rb.FD()),
		asm.Mov.Imm(asm.R2, 24),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R1, asm.R6, 8, asm.DWord),
		asm.StoreMem(asm.R7, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R6, 16, asm.DWord),
		asm.StoreMem(asm.R7, 8, asm.R1, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R7, 16, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Mov.Imm(asm.R2, noWakeup),
		asm.FnRingbufSubmit.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}
