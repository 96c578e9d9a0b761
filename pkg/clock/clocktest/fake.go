// Package clocktest is a clock.Clock for tests: time stands still until the test moves it with
// Advance, which fires every timer, ticker and delayed call that falls due, in time order.
package clocktest

import (
	"sync"
	"time"

	"telematics/pkg/clock"
)

// Fake is a clock.Clock whose time moves only by Advance or Set. It is safe for concurrent use.
//
// What fires, and how, when time reaches a waiter's due time:
//   - a timer sends the time on its channel (buffer 1) and stops;
//   - a ticker sends the time on its channel (buffer 1) every period; a tick that finds the
//     channel full is dropped, like time.Ticker's, and the ticker tries again at its last tick
//     time not after the time Advance moves to (the ticks between would find it full too,
//     unless the receiver reads meanwhile). So a loop that reads the channel reads a tick
//     when Now() is no earlier than one period before the time Advance reached;
//   - a delayed call (AfterFunc) runs f synchronously on the goroutine that called Advance,
//     with the Fake unlocked (f may use the clock), so Advance returns after f did. One due
//     at or before the current time runs on the next Advance (Advance(0) runs it).
//
// A goroutine that receives a tick runs on its own schedule: after Advance, poll for its effect.
// A goroutine that creates its ticker when it starts may not have done so yet: wait until
// Waiters reports it before the first Advance.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	seq     uint64
	waiters map[*waiter]struct{}
}

// New returns a Fake that reads start until it is moved.
func New(start time.Time) *Fake {
	return &Fake{now: start, waiters: map[*waiter]struct{}{}}
}

var _ clock.Clock = (*Fake)(nil)

type waiter struct {
	f      *Fake
	when   time.Time
	seq    uint64 // creation order: waiters due at the same time fire in the order they were set
	period time.Duration
	ch     chan time.Time // timers and tickers
	fn     func()         // delayed calls
}

// Now is the Fake's current time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Since is Now().Sub(t).
func (f *Fake) Since(t time.Time) time.Duration { return f.Now().Sub(t) }

// Until is t.Sub(Now()).
func (f *Fake) Until(t time.Time) time.Duration { return t.Sub(f.Now()) }

// Waiters is how many timers, tickers and delayed calls are pending.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// NewTimer makes a timer that fires when the Fake's time reaches Now()+d; with d <= 0 it has
// fired when NewTimer returns, like time.NewTimer.
func (f *Fake) NewTimer(d time.Duration) (clock.Timer, <-chan time.Time) {
	w := &waiter{f: f, ch: make(chan time.Time, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schedule(w, d)
	return (*fakeTimer)(w), w.ch
}

// NewTicker makes a ticker with period d; it panics if d <= 0, like time.NewTicker.
func (f *Fake) NewTicker(d time.Duration) (clock.Ticker, <-chan time.Time) {
	if d <= 0 {
		panic("clocktest: non-positive interval for NewTicker")
	}
	w := &waiter{f: f, ch: make(chan time.Time, 1), period: d}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schedule(w, d)
	return (*fakeTicker)(w), w.ch
}

// AfterFunc makes a delayed call of f at Now()+d; Advance runs it (see Fake).
func (f *Fake) AfterFunc(d time.Duration, fn func()) clock.Timer {
	w := &waiter{f: f, fn: fn}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schedule(w, max(d, 0))
	return (*fakeTimer)(w)
}

// schedule makes w due d from now; f.mu is held. A timer due now fires at once.
func (f *Fake) schedule(w *waiter, d time.Duration) {
	if w.ch != nil && w.period == 0 && d <= 0 {
		delete(f.waiters, w)
		send(w.ch, f.now)
		return
	}
	f.seq++
	w.when, w.seq = f.now.Add(d), f.seq
	f.waiters[w] = struct{}{}
}

// Advance moves the time forward by d, firing what falls due on the way in time order; each
// waiter sees Now() equal to its due time when it fires. A negative d moves the time back, as
// Set does.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	target := f.now.Add(d)
	f.mu.Unlock()
	f.Set(target)
}

// Set moves the time to t. Forward, it fires what falls due on the way, like Advance;
// backward (a wall clock stepped back, for tests of clock skew), it fires nothing, and what is
// pending stays due at the time it was due.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	if t.Before(f.now) {
		f.now = t
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	f.advanceTo(t)
}

func (f *Fake) advanceTo(target time.Time) {
	for {
		f.mu.Lock()
		var next *waiter
		for w := range f.waiters {
			if w.when.After(target) {
				continue
			}
			if next == nil || w.when.Before(next.when) || (w.when.Equal(next.when) && w.seq < next.seq) {
				next = w
			}
		}
		if next == nil {
			if target.After(f.now) {
				f.now = target
			}
			f.mu.Unlock()
			return
		}
		if next.when.After(f.now) {
			f.now = next.when
		}
		switch {
		case next.fn != nil:
			delete(f.waiters, next)
			fn := next.fn
			f.mu.Unlock()
			fn()
			continue
		case next.period > 0:
			if send(next.ch, f.now) {
				next.when = next.when.Add(next.period)
			} else if last := next.when.Add(target.Sub(next.when) / next.period * next.period); last.After(next.when) {
				// Dropped, like time.Ticker's. So would be the ticks until target while the
				// receiver does not read: try again at the last one, not at every one.
				next.when = last
			} else {
				next.when = next.when.Add(next.period)
			}
			f.seq++
			next.seq = f.seq
		default:
			delete(f.waiters, next)
			send(next.ch, f.now)
		}
		f.mu.Unlock()
	}
}

// send delivers t without blocking; it reports whether there was room.
func send(ch chan time.Time, t time.Time) bool {
	select {
	case ch <- t:
		return true
	default:
		return false
	}
}

type fakeTimer waiter

// Stop stops the timer; like time.Timer's since Go 1.23, no stale value is received after it.
func (t *fakeTimer) Stop() bool {
	w := (*waiter)(t)
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	_, pending := w.f.waiters[w]
	delete(w.f.waiters, w)
	drain(w.ch)
	return pending
}

// drain empties ch (nil for a delayed call) of a value sent before a Stop or Reset.
func drain(ch chan time.Time) {
	select {
	case <-ch:
	default:
	}
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	w := (*waiter)(t)
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	_, pending := w.f.waiters[w]
	drain(w.ch) // like time.Timer since Go 1.23: no stale value is received after Reset
	if w.fn != nil {
		d = max(d, 0)
	}
	w.f.schedule(w, d)
	return pending
}

type fakeTicker waiter

// Stop stops the ticker; like time.Ticker's since Go 1.23, no stale tick is received after it.
func (t *fakeTicker) Stop() {
	w := (*waiter)(t)
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	delete(w.f.waiters, w)
	drain(w.ch)
}

func (t *fakeTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clocktest: non-positive interval for Ticker.Reset")
	}
	w := (*waiter)(t)
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	w.period = d
	drain(w.ch)
	w.f.schedule(w, d)
}
