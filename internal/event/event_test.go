package event

import "testing"

func TestComm(t *testing.T) {
	var e Event
	e.SetComm("node")
	if got := string(e.CommBytes()); got != "node" {
		t.Fatalf("CommBytes = %q", got)
	}
	e.SetComm("a-very-long-command-name")
	if got := string(e.CommBytes()); got != "a-very-long-com" {
		t.Fatalf("CommBytes = %q, want the kernel's 15-byte truncation", got)
	}
}

func TestFamilyString(t *testing.T) {
	if IPv4.String() != "ipv4" || IPv6.String() != "ipv6" {
		t.Fatal("family names")
	}
}
