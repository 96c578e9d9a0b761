package clock_test

import (
	"testing"
	"time"

	"telematics/pkg/clock"
	"telematics/pkg/clock/clocktest"
)

func TestOrMeansRealForNil(t *testing.T) {
	if _, ok := clock.Or(nil).(clock.Real); !ok {
		t.Fatalf("Or(nil) = %T, want clock.Real", clock.Or(nil))
	}
	f := clocktest.New(time.Unix(0, 0))
	if clock.Or(f) != clock.Clock(f) {
		t.Fatal("Or(c) is not c")
	}
}

func TestRealTimerAndAfterFunc(t *testing.T) {
	var c clock.Clock = clock.Real{}
	if d := c.Until(c.Now().Add(time.Hour)); d <= 0 || d > time.Hour {
		t.Fatalf("Until: %v", d)
	}
	_, ch := c.NewTimer(time.Millisecond)
	<-ch
	tk, tch := c.NewTicker(time.Millisecond)
	<-tch
	tk.Stop()
	ran := make(chan struct{})
	c.AfterFunc(time.Millisecond, func() { close(ran) })
	<-ran
	if c.Since(c.Now().Add(-time.Minute)) < time.Minute {
		t.Fatal("Since")
	}
}
