package procnet

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestTimeWaits(t *testing.T) {
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1C9B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:1C9B 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   2: 0100007F:9C41 0100007F:1C9B 05 00000000:00000000 03:00000096 00000000     0        0 0 3 0000000000000000
   3: 0100007F:9C42 0100007F:1C9B 05 00000000:00000000 02:00000096 00000000     0        0 777 2 0000000000000000 20 4 30 10 -1
`
	tcp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000100007F:1C9B 0000000000000000FFFF00000200007F:A000 06 00000000:00000000 03:00000BB8 00000000     0        0 0 3 0000000000000000
   1: 00000000000000000000000001000000:9C40 00000000000000000000000001000000:1C9B 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
`
	want := []TimeWait{
		{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1"), 40000, 7323, 60 * time.Second},
		// A timewait socket still in FIN_WAIT2 counts; a full socket there does not.
		{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.1"), 40001, 7323, 1500 * time.Millisecond},
		// v4-mapped shown as IPv4.
		{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), 7323, 40960, 30 * time.Second},
		{netip.MustParseAddr("::1"), netip.MustParseAddr("::1"), 40000, 7323, 0},
	}
	var got []TimeWait
	for _, table := range []string{tcp, tcp6} {
		if err := TimeWaits(strings.NewReader(table), func(tw TimeWait) { got = append(got, tw) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("got %d timewait sockets, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("timewait socket %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestTimeWaitsBadInput(t *testing.T) {
	for _, table := range []string{
		"header\n   0: 0100007F:9C40 0100007F\n",
		"header\n   0: 0100007F:9C40 0100007F:1C9B 06 00000000:00000000 03:zz 0 0 0 0\n",
		"header\n   0: 0100007F:9C40 01007F:1C9B 06 00000000:00000000 03:00000010 0 0 0 0\n",
		"header\n   0: 0100007F 0100007F:1C9B 06 00000000:00000000 03:00000010 0 0 0 0\n",
	} {
		if err := TimeWaits(strings.NewReader(table), func(TimeWait) {}); err == nil {
			t.Errorf("no error for %q", table)
		}
	}
}
