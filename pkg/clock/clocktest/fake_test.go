package clocktest_test

import (
	"sync"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func received(ch <-chan time.Time) (time.Time, bool) {
	select {
	case v := <-ch:
		return v, true
	default:
		return time.Time{}, false
	}
}

func TestTimerFiresAtItsTime(t *testing.T) {
	f := clocktest.New(t0)
	_, ch := f.NewTimer(time.Second)
	f.Advance(999 * time.Millisecond)
	if _, ok := received(ch); ok {
		t.Fatal("timer fired early")
	}
	f.Advance(5 * time.Millisecond)
	v, ok := received(ch)
	if !ok || !v.Equal(t0.Add(time.Second)) {
		t.Fatalf("timer: %v %v, want a fire at %v", v, ok, t0.Add(time.Second))
	}
	if got := f.Now(); !got.Equal(t0.Add(1004 * time.Millisecond)) {
		t.Fatalf("now %v", got)
	}
	if f.Waiters() != 0 {
		t.Fatalf("a fired timer is still pending: %d", f.Waiters())
	}
}

func TestTimerDueNowHasFired(t *testing.T) {
	f := clocktest.New(t0)
	_, ch := f.NewTimer(0)
	if v, ok := received(ch); !ok || !v.Equal(t0) {
		t.Fatalf("NewTimer(0): %v %v", v, ok)
	}
}

func TestTimerStopAndReset(t *testing.T) {
	f := clocktest.New(t0)
	tm, ch := f.NewTimer(time.Second)
	if !tm.Stop() {
		t.Fatal("Stop of a pending timer reported false")
	}
	if tm.Stop() {
		t.Fatal("second Stop reported true")
	}
	f.Advance(time.Hour)
	if _, ok := received(ch); ok {
		t.Fatal("stopped timer fired")
	}
	if tm.Reset(time.Minute) {
		t.Fatal("Reset of a stopped timer reported it pending")
	}
	// A fired value nobody read is gone after Stop, as with time.Timer since Go 1.23.
	stale, sch := f.NewTimer(0)
	stale.Stop()
	if _, ok := received(sch); ok {
		t.Fatal("stale value received after Stop")
	}
	f.Advance(time.Minute)
	if v, ok := received(ch); !ok || !v.Equal(t0.Add(time.Hour+time.Minute)) {
		t.Fatalf("reset timer: %v %v", v, ok)
	}
}

func TestTickerDropsTicksWhenFull(t *testing.T) {
	f := clocktest.New(t0)
	tk, ch := f.NewTicker(100 * time.Millisecond)
	f.Advance(50 * time.Millisecond)
	if _, ok := received(ch); ok {
		t.Fatal("tick before the period")
	}
	f.Advance(time.Second) // ten periods; the channel holds one tick, nobody reads it
	if v, ok := received(ch); !ok || !v.Equal(t0.Add(100*time.Millisecond)) {
		t.Fatalf("first tick: %v %v", v, ok)
	}
	if _, ok := received(ch); ok {
		t.Fatal("more than one tick buffered")
	}
	// Next due at the first tick time after 1.05s: 1.1s.
	f.Advance(49 * time.Millisecond)
	if _, ok := received(ch); ok {
		t.Fatal("tick before its time")
	}
	f.Advance(time.Millisecond)
	if v, ok := received(ch); !ok || !v.Equal(t0.Add(1100*time.Millisecond)) {
		t.Fatalf("second tick: %v %v", v, ok)
	}
	f.Advance(100 * time.Millisecond) // unread...
	f.Advance(100 * time.Millisecond) // ...so this one is dropped
	if v, ok := received(ch); !ok || !v.Equal(t0.Add(1200*time.Millisecond)) {
		t.Fatalf("kept tick: %v %v", v, ok)
	}
	// A receiver that reads while time moves gets a tick it reads no earlier than one period
	// before the time Advance reaches (here 2.3 s), however it keeps up.
	done := make(chan time.Duration)
	go func() {
		for range ch {
			if at := f.Since(t0); at >= 2200*time.Millisecond {
				done <- at
				return
			}
		}
	}()
	f.Advance(time.Second)
	if at := <-done; at > 2300*time.Millisecond {
		t.Fatalf("reader read at %v, past the time Advance reached", at)
	}
	tk.Reset(time.Second)
	f.Advance(999 * time.Millisecond)
	if _, ok := received(ch); ok {
		t.Fatal("tick before the new period")
	}
	f.Advance(time.Millisecond)
	if _, ok := received(ch); !ok {
		t.Fatal("no tick after Reset's period")
	}
	tk.Stop()
	f.Advance(time.Hour)
	if _, ok := received(ch); ok {
		t.Fatal("stopped ticker ticked")
	}
	if f.Waiters() != 0 {
		t.Fatalf("waiters after Stop: %d", f.Waiters())
	}
}

func TestAfterFuncRunsInTimeOrderBeforeAdvanceReturns(t *testing.T) {
	f := clocktest.New(t0)
	var got []string
	at := func(name string) func() {
		return func() { got = append(got, name+"@"+f.Since(t0).String()) }
	}
	f.AfterFunc(3*time.Second, at("c"))
	f.AfterFunc(time.Second, at("a"))
	f.AfterFunc(time.Second, at("b")) // same time: creation order
	// A call may schedule another; one due within the same Advance runs in it.
	f.AfterFunc(2*time.Second, func() { f.AfterFunc(500*time.Millisecond, at("d")) })
	stopped := f.AfterFunc(2*time.Second, at("never"))
	if !stopped.Stop() {
		t.Fatal("Stop of a pending call reported false")
	}
	f.Advance(3 * time.Second)
	want := []string{"a@1s", "b@1s", "d@2.5s", "c@3s"}
	if len(got) != len(want) {
		t.Fatalf("calls %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("calls %v, want %v", got, want)
		}
	}
}

func TestAfterFuncDueNowRunsOnNextAdvance(t *testing.T) {
	f := clocktest.New(t0)
	ran := false
	f.AfterFunc(-time.Second, func() { ran = true })
	if ran {
		t.Fatal("ran before Advance")
	}
	f.Advance(0)
	if !ran {
		t.Fatal("Advance(0) did not run a call due now")
	}
}

func TestSet(t *testing.T) {
	f := clocktest.New(t0)
	_, early := f.NewTimer(time.Minute)
	// Back: nothing fires, and the timer stays due at t0+1m, now two minutes away.
	f.Set(t0.Add(-time.Minute))
	if !f.Now().Equal(t0.Add(-time.Minute)) {
		t.Fatalf("Set back: now %v", f.Now())
	}
	f.Advance(time.Minute + time.Second)
	if _, ok := received(early); ok {
		t.Fatal("timer fired at its old distance after the clock was set back")
	}
	f.Advance(time.Minute)
	if v, ok := received(early); !ok || !v.Equal(t0.Add(time.Minute)) {
		t.Fatalf("timer after Set back: %v %v", v, ok)
	}
	f.Advance(-time.Minute - time.Second) // back, like Set
	if !f.Now().Equal(t0) {
		t.Fatalf("Advance back: now %v, want %v", f.Now(), t0)
	}
	_, ch := f.NewTimer(time.Minute)
	f.Set(t0.Add(time.Hour))
	if v, ok := received(ch); !ok || !v.Equal(t0.Add(time.Minute)) {
		t.Fatalf("timer under Set: %v %v", v, ok)
	}
	if f.Until(t0.Add(2*time.Hour)) != time.Hour {
		t.Fatalf("Until: %v", f.Until(t0.Add(2*time.Hour)))
	}
}

// TestConcurrentUse is for -race: a consumer goroutine reading ticks and making timers while
// the test advances.
func TestConcurrentUse(t *testing.T) {
	f := clocktest.New(t0)
	tk, ch := f.NewTicker(time.Second)
	defer tk.Stop()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-ch:
				tm, _ := f.NewTimer(time.Second)
				tm.Stop()
				_ = f.Now()
			}
		}
	}()
	for range 200 {
		f.Advance(time.Second)
		_ = f.Waiters()
	}
	close(done)
	wg.Wait()
}
