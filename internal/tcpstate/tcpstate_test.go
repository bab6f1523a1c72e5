package tcpstate

import "testing"

func TestStringAndParseRoundTrip(t *testing.T) {
	for s := Established; s <= BoundInactive; s++ {
		got, err := Parse(s.String())
		if err != nil || got != s {
			t.Fatalf("Parse(%q) = %v, %v; want %v", s.String(), got, err, s)
		}
	}
}

func TestKernelNumbers(t *testing.T) {
	// Spot checks against include/net/tcp_states.h.
	want := map[State]string{1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT", 10: "LISTEN", 12: "NEW_SYN_RECV"}
	for s, n := range want {
		if s.String() != n {
			t.Errorf("State(%d) = %s, want %s", s, s, n)
		}
	}
}

func TestParseForgiving(t *testing.T) {
	for _, in := range []string{"close_wait", "TCP_CLOSE_WAIT", " Close_Wait "} {
		if s, err := Parse(in); err != nil || s != CloseWait {
			t.Errorf("Parse(%q) = %v, %v", in, s, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, in := range []string{"", "CLOSED", "WAIT", "0"} {
		if _, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) accepted", in)
		}
	}
}

func TestUnknownString(t *testing.T) {
	if got := State(0).String(); got != "UNKNOWN(0)" {
		t.Errorf("State(0) = %s", got)
	}
	if got := State(200).String(); got != "UNKNOWN(200)" {
		t.Errorf("State(200) = %s", got)
	}
}
