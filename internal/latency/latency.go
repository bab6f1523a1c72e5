// Package latency keeps a fixed-size histogram of event ages (time from the
// kernel event to its write), cheap enough for the per-event path.
package latency

import (
	"math/bits"
	"time"
)

// Histogram buckets durations by powers of two of microseconds: bucket i
// holds ages below 2^i µs. No allocation, no lock (one goroutine writes).
type Histogram struct {
	counts [40]uint64
	n      uint64
}

// Add records one age.
func (h *Histogram) Add(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	i := bits.Len64(us)
	if i >= len(h.counts) {
		i = len(h.counts) - 1
	}
	h.counts[i]++
	h.n++
}

// Count is how many ages were recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns an upper bound of the q-quantile (0 < q <= 1): the top of
// the bucket that holds it, so at most twice the true value.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank == 0 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(uint64(1)<<i) * time.Microsecond
		}
	}
	return time.Duration(uint64(1)<<(len(h.counts)-1)) * time.Microsecond
}
