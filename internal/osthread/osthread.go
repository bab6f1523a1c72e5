// Package osthread runs code that changes its OS thread, such as its mount
// or network namespace, on a thread of its own that ends with it.
package osthread

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// Alone runs fn on a locked OS thread that is not the process's main thread
// and that no goroutine uses after it: the runtime ends a thread whose
// locked goroutine exits, so what fn changed of the thread goes with it.
// The main thread the runtime does not end but parks, changed, and
// /proc/PID shows the main thread's namespaces (to cilium/ebpf's tracefs
// lookup, to anyone reading /proc/self/ns): should the goroutine start
// there, it holds that thread, unchanged, while another does the work.
func Alone(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			Alone(fn) // the main thread is held by this goroutine meanwhile
			runtime.UnlockOSThread()
		} else {
			fn()
		}
		close(done)
	}()
	<-done
}
