// Package clock is the one source of time for code whose behaviour depends on it: expiry,
// sweeps, retention, rate windows, resend intervals. Production code uses Real; tests use
// clocktest.Fake and move time with Advance instead of sleeping.
//
// The rule for what goes through a Clock: a time that decides behaviour a user relies on (a
// command's expiry, a lockout window, a sweep interval) does; a pure I/O timeout (a network
// deadline, an HTTP client timeout, a context deadline on a network call, the backoff between
// reconnects) stays on the real clock, because it guards against a stuck peer, not a policy.
package clock

import "time"

// Clock tells the time and makes timers, tickers and delayed calls on it. Its methods have the
// meaning of the time package's functions of the same name.
type Clock interface {
	// Now is the current time.
	Now() time.Time
	// NewTimer starts a timer that sends the time once on the returned channel after d.
	NewTimer(d time.Duration) (Timer, <-chan time.Time)
	// NewTicker starts a ticker that sends the time on the returned channel every d; like
	// time.Ticker, the channel holds one tick and a tick that finds it full is dropped. d must
	// be greater than zero.
	NewTicker(d time.Duration) (Ticker, <-chan time.Time)
	// AfterFunc calls f in its own goroutine after d.
	AfterFunc(d time.Duration, f func()) Timer
	// Since is Now().Sub(t).
	Since(t time.Time) time.Duration
	// Until is t.Sub(Now()).
	Until(t time.Time) time.Duration
}

// Timer is a timer or a delayed call made by a Clock.
type Timer interface {
	// Stop prevents the timer from firing; it reports whether it stopped a pending timer.
	Stop() bool
	// Reset makes the timer fire after d; it reports whether the timer was pending.
	Reset(d time.Duration) bool
}

// Ticker is a ticker made by a Clock.
type Ticker interface {
	// Stop turns the ticker off; no tick is sent after Stop returns.
	Stop()
	// Reset stops the ticker and restarts it with period d.
	Reset(d time.Duration)
}

// Or is c, or Real when c is nil: a config's nil Clock means the real one.
func Or(c Clock) Clock {
	if c == nil {
		return Real{}
	}
	return c
}

// Real is the system's clock: the time package.
type Real struct{}

// Now is time.Now.
func (Real) Now() time.Time { return time.Now() }

// NewTimer is time.NewTimer.
func (Real) NewTimer(d time.Duration) (Timer, <-chan time.Time) {
	t := time.NewTimer(d)
	return t, t.C
}

// NewTicker is time.NewTicker.
func (Real) NewTicker(d time.Duration) (Ticker, <-chan time.Time) {
	t := time.NewTicker(d)
	return t, t.C
}

// AfterFunc is time.AfterFunc.
func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Since is time.Since.
func (Real) Since(t time.Time) time.Duration { return time.Since(t) }

// Until is time.Until.
func (Real) Until(t time.Time) time.Duration { return time.Until(t) }
