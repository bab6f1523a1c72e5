package main

import (
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// runStorm makes -conns short connections from -clients goroutines to a
// server it runs itself, and prints the rate on one line:
//
//	storm: conns=20000 clients=8 seconds=0.731 rate=27360 state_changes=200002 retrans=0 listen_drops=0
//
// Each connection makes 10 state changes across its two sockets (client:
// CLOSE>SYN_SENT>ESTABLISHED>FIN_WAIT1>FIN_WAIT2>CLOSE; server:
// LISTEN>SYN_RECV>ESTABLISHED>CLOSE_WAIT>LAST_ACK>CLOSE) and the listener 2.
func runStorm(args []string) error {
	fs := flag.NewFlagSet("tcpstorm storm", flag.ExitOnError)
	clients := fs.Int("clients", 8, "client goroutines, each in a connect+close loop")
	conns := fs.Int("conns", 20000, "connections in all")
	addr := fs.String("addr", "127.0.0.1:7777", "server address (IPv4)")
	acceptors := fs.Int("acceptors", 2, "server goroutines in an accept+close loop")
	netns := fs.Bool("netns", false, "run in a fresh network namespace (root), so nothing else shares it")
	fs.Parse(args)
	if *clients < 1 || *conns < 1 || *acceptors < 1 {
		return errors.New("-clients, -conns and -acceptors must be positive")
	}
	sa, err := sockaddr(*addr)
	if err != nil {
		return err
	}
	if *netns {
		if !inFreshNetNS() {
			return reexecInNetNS(append([]string{"storm"}, args...))
		}
		if err := setupNetNS(); err != nil {
			return err
		}
	}

	lfd, err := listenTCP(sa, 65535)
	if err != nil {
		return err
	}
	var (
		accepted atomic.Int64
		served   = make(chan struct{})
		srvErr   = make(chan error, *acceptors)
		once     sync.Once
	)
	for range *acceptors {
		go func() {
			for {
				fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
				if err == unix.EINTR || err == unix.ECONNABORTED {
					continue
				}
				if err != nil {
					srvErr <- err // EINVAL after the shutdown below: done
					return
				}
				unix.Close(fd)
				if accepted.Add(1) == int64(*conns) {
					once.Do(func() { close(served) })
				}
			}
		}()
	}

	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		cliErrs = make(chan error, *clients)
	)
	start := time.Now()
	for range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(*conns) {
				if err := connectClose(sa); err != nil {
					cliErrs <- fmt.Errorf("connect %s: %w", *addr, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-cliErrs:
		return err
	default:
	}
	select {
	case <-served:
	case err := <-srvErr:
		return fmt.Errorf("accept: %w", err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("server accepted only %d of %d connections", accepted.Load(), *conns)
	}
	elapsed := time.Since(start)
	// shutdown, not just close, wakes the acceptors blocked in accept();
	// it also moves the listener LISTEN -> CLOSE.
	unix.Shutdown(lfd, unix.SHUT_RDWR)
	unix.Close(lfd)

	// A lost SYN or FIN costs its connection a retransmission timeout (1 s
	// for a SYN): a rate with any retransmission measured packet loss, not
	// CPU cost. On loopback that means a full accept queue (listen_drops) or
	// a starved CPU (softirq backlog past net.core.netdev_max_backlog).
	fmt.Printf("storm: conns=%d clients=%d seconds=%.3f rate=%.0f state_changes=%d retrans=%d listen_drops=%d\n",
		*conns, *clients, elapsed.Seconds(), float64(*conns)/elapsed.Seconds(), 10**conns+2,
		counter("Tcp", "RetransSegs"), counter("TcpExt", "ListenDrops"))
	return nil
}
