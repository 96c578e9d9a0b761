package accounts

import (
	"errors"
	"sync"
	"telematics/pkg/clock"
	"time"
)

// ErrLockedOut means too many wrong passwords were given for a user name in the failure
// window, or as many checks as could still lock it are running; the name is refused without
// checking its password until the lockout ends.
var ErrLockedOut = errors.New("too many failed logins for this user name")

// ErrInFlight means as many checks of a name's password are running as failures are left
// before a lockout: the attempt is refused unchecked and not counted; it may be retried as
// soon as they end.
var ErrInFlight = errors.New("too many logins for this user name at once")

// maxTrackedNames bounds the names a Lockout remembers: each costs about 100 bytes plus its
// failure times, so the map stays under ~10 MiB whatever names strangers try.
const maxTrackedNames = 1 << 16

// Lockout stops password guessing per user name (OWASP ASVS V2.2.1): MaxFailures wrong
// passwords within Window lock the name for Duration. It is kept apart from the second
// factor's lockout, so that a stranger who knows only a user name can block that user's
// password logins, never what a logged-in user does with a valid TOTP code.
//
// It counts any name, whether or not a user has it, the same way and in memory, so that
// neither its answers nor its timing tell which accounts exist; a gateway restart forgets it.
//
// An attempt is counted before its password is checked (Reserve): a name with as many
// checks running as failures left before a lockout refuses further attempts until they end,
// so parallel requests cannot have more than MaxFailures wrong passwords evaluated in a
// window. The window slides: a success does not erase earlier failures.
type Lockout struct {
	maxFailures      int
	window, duration time.Duration
	clock            clock.Clock

	mu        sync.Mutex
	names     map[string]*lockState
	lastSweep time.Time
}

type lockState struct {
	failures      []int64 // unix ms of the failures inside the window
	inflight      int     // reserved attempts whose password is being checked
	lockedUntilMs int64   // 0, or the end of the current lockout
}

// NewLockout returns a lockout of maxFailures (at least 1) within window for duration, on clk
// (nil: the real clock).
func NewLockout(maxFailures int, window, duration time.Duration, clk clock.Clock) *Lockout {
	return &Lockout{maxFailures: max(maxFailures, 1), window: window, duration: duration, clock: clock.Or(clk),
		names: map[string]*lockState{}}
}

// Attempt is one reserved password check. Exactly one of Failed, Succeeded or Cancel ends it.
type Attempt struct {
	l    *Lockout
	name string
	once sync.Once
}

// Reserve counts an attempt for name before its password is checked. It returns
// ErrLockedOut and the time the lockout ends if the name is locked out, ErrInFlight if enough
// checks are running to lock it.
func (l *Lockout) Reserve(name string) (*Attempt, time.Time, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	st := l.state(name, now)
	if st == nil {
		// Every tracked name has a check running or is locked: refuse rather than forget one.
		return nil, time.Time{}, ErrInFlight
	}
	st.prune(now, l.window)
	if st.lockedUntilMs != 0 {
		return nil, time.UnixMilli(st.lockedUntilMs), ErrLockedOut
	}
	if st.inflight+len(st.failures) >= l.maxFailures {
		return nil, time.Time{}, ErrInFlight
	}
	st.inflight++
	return &Attempt{l: l, name: name}, time.Time{}, nil
}

// Failed counts a wrong password. It reports whether the name is locked out now, and until
// when.
func (a *Attempt) Failed() (until time.Time, locked bool) {
	a.once.Do(func() {
		l := a.l
		l.mu.Lock()
		defer l.mu.Unlock()
		now := l.clock.Now()
		st := l.release(a.name)
		if st == nil {
			return
		}
		st.prune(now, l.window)
		if st.lockedUntilMs != 0 { // locked by another check meanwhile
			until, locked = time.UnixMilli(st.lockedUntilMs), true
			return
		}
		st.failures = append(st.failures, now.UnixMilli())
		if len(st.failures) >= l.maxFailures {
			st.failures = nil
			st.lockedUntilMs = now.Add(l.duration).UnixMilli()
			until, locked = time.UnixMilli(st.lockedUntilMs), true
		}
	})
	return until, locked
}

// Succeeded ends an attempt whose password was right. Earlier failures stay in the window.
func (a *Attempt) Succeeded() { a.Cancel() }

// Cancel ends an attempt whose password was not checked (the gateway was too busy).
func (a *Attempt) Cancel() {
	a.once.Do(func() {
		a.l.mu.Lock()
		if st := a.l.release(a.name); st != nil && st.idle() {
			delete(a.l.names, a.name)
		}
		a.l.mu.Unlock()
	})
}

// LockedUntil returns the end of name's lockout, or the zero time if it is not locked out.
func (l *Lockout) LockedUntil(name string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.names[name]
	if st == nil {
		return time.Time{}
	}
	st.prune(l.clock.Now(), l.window)
	if st.lockedUntilMs == 0 {
		return time.Time{}
	}
	return time.UnixMilli(st.lockedUntilMs)
}

// Clear forgets name's failures and ends its lockout (an administrator's unlock). Checks
// running now still end normally. It reports whether there was anything to clear.
func (l *Lockout) Clear(name string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.names[name]
	if st == nil {
		return false
	}
	had := len(st.failures) > 0 || st.lockedUntilMs != 0
	st.failures, st.lockedUntilMs = nil, 0
	if st.inflight == 0 {
		delete(l.names, name)
	}
	return had
}

// state returns name's record, making one if needed; nil if none can be made because the map
// is full of names that must be kept. l.mu is held.
func (l *Lockout) state(name string, now time.Time) *lockState {
	if st := l.names[name]; st != nil {
		return st
	}
	if len(l.names) >= maxTrackedNames {
		l.makeRoom(now)
		if len(l.names) >= maxTrackedNames {
			return nil
		}
	}
	st := &lockState{}
	l.names[name] = st
	return st
}

// makeRoom drops the names with nothing left to remember; at most once per tenth of the
// window it walks the whole map, otherwise (or if that freed nothing) it forgets one name
// that is neither locked nor being checked, whose failures then no longer count: with the
// map this full, most names are a flood's.
func (l *Lockout) makeRoom(now time.Time) {
	if now.Sub(l.lastSweep) >= l.window/10 {
		l.lastSweep = now
		for name, st := range l.names {
			st.prune(now, l.window)
			if st.idle() {
				delete(l.names, name)
			}
		}
		if len(l.names) < maxTrackedNames {
			return
		}
	}
	for name, st := range l.names {
		if st.inflight == 0 && st.lockedUntilMs == 0 {
			delete(l.names, name)
			return
		}
	}
}

// release ends one running check of name and drops the record if it holds nothing. l.mu is
// held.
func (l *Lockout) release(name string) *lockState {
	st := l.names[name]
	if st == nil {
		return nil
	}
	if st.inflight > 0 {
		st.inflight--
	}
	return st
}

// prune drops failures that left the window and a lockout that ended.
func (st *lockState) prune(now time.Time, window time.Duration) {
	nowMs := now.UnixMilli()
	if st.lockedUntilMs != 0 && nowMs >= st.lockedUntilMs {
		st.lockedUntilMs = 0
	}
	oldest := nowMs - window.Milliseconds()
	kept := st.failures[:0]
	for _, t := range st.failures {
		if t > oldest {
			kept = append(kept, t)
		}
	}
	st.failures = kept
}

func (st *lockState) idle() bool {
	return st.inflight == 0 && st.lockedUntilMs == 0 && len(st.failures) == 0
}
