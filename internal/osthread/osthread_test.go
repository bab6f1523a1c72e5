package osthread

import (
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAloneNeverOnMainThread: from goroutines the main thread may run (as a
// goroutine that waits lets its thread run the next), fn never runs there,
// and never twice on one thread.
func TestAloneNeverOnMainThread(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]bool{}
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Alone(func() {
				tid := unix.Gettid()
				mu.Lock()
				defer mu.Unlock()
				if tid == unix.Getpid() {
					t.Error("fn ran on the main thread")
				}
				if seen[tid] {
					t.Errorf("fn ran twice on thread %d: the first run's thread lived on", tid)
				}
				seen[tid] = true
			})
		}()
	}
	wg.Wait()
}
