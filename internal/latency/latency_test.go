package latency

import (
	"testing"
	"time"
)

func TestQuantiles(t *testing.T) {
	var h Histogram
	for i := 0; i < 99; i++ {
		h.Add(3 * time.Millisecond)
	}
	h.Add(40 * time.Millisecond)
	// 3 ms lies in [2048, 4096) µs; 40 ms in [32768, 65536) µs.
	if got := h.Quantile(0.5); got != 4096*time.Microsecond {
		t.Errorf("p50 = %v", got)
	}
	if got := h.Quantile(0.99); got != 4096*time.Microsecond {
		t.Errorf("p99 = %v", got)
	}
	if got := h.Quantile(1); got != 65536*time.Microsecond {
		t.Errorf("max = %v", got)
	}
	if h.Count() != 100 {
		t.Errorf("count %d", h.Count())
	}
}

func TestEmptyAndExtremes(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 {
		t.Error("empty histogram")
	}
	h.Add(-time.Second)
	h.Add(1000 * time.Hour)
	if h.Quantile(0.5) != time.Microsecond || h.Quantile(1) <= time.Hour {
		t.Errorf("extremes: %v %v", h.Quantile(0.5), h.Quantile(1))
	}
}

func BenchmarkAdd(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		h.Add(time.Duration(i) * time.Microsecond)
	}
}
