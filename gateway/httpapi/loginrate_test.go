package httpapi

import (
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
)

func TestAddrLimiter(t *testing.T) {
	clk := clocktest.New(time.Unix(1_700_000_000, 0))
	l := NewAddrLimiter(6, 2, clk) // one token per 10 s
	if !l.Take("192.0.2.1") || !l.Take("192.0.2.1") || l.Take("192.0.2.1") {
		t.Fatal("burst of 2 not enforced")
	}
	if !l.Take("192.0.2.2") {
		t.Fatal("another address is limited")
	}
	l.Refund("192.0.2.1")
	if !l.Take("192.0.2.1") {
		t.Fatal("a refunded token is not given back")
	}
	clk.Advance(10 * time.Second)
	if !l.Take("192.0.2.1") || l.Take("192.0.2.1") {
		t.Fatal("refill: one token per 10 s")
	}
	// IPv6 counts per /64.
	if !l.Take("2001:db8::1") || !l.Take("2001:db8::2") || l.Take("2001:db8::3") {
		t.Fatal("IPv6 addresses of one /64 do not share a bucket")
	}
	if !l.Take("2001:db8:0:1::1") {
		t.Fatal("another /64 is limited")
	}
	if NewAddrLimiter(0, 5, nil) != nil || !(*AddrLimiter)(nil).Take("x") {
		t.Fatal("rate 0 must turn the limit off")
	}
}
