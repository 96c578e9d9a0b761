package accounts

import (
	"errors"
	"runtime"
	"time"
)

// ErrBusy means no hashing slot came free within the gate's wait: the gateway is checking as
// many passwords as it allows at once (a login flood). It says nothing about the password.
var ErrBusy = errors.New("too many password checks at once")

// Gate bounds the argon2id computations running at once. Each one holds Params.MemoryKiB of
// memory (19 MiB by default) while it runs, so without a bound a flood of login requests
// (right or wrong passwords, real or made-up user names: all cost a hash) would take the
// gateway's memory with it. Hashing is CPU-bound, so more at once than there are cores only
// adds memory; a request that waits longer than the gate's wait is refused with ErrBusy rather
// than queued without end.
type Gate struct {
	slots chan struct{}
	wait  time.Duration
}

// DefaultHashWait is how long a password check waits for a slot by default.
const DefaultHashWait = 5 * time.Second

// NewGate returns a gate for n hashes at once (n ≤ 0: GOMAXPROCS) that waits at most wait for
// a slot (wait ≤ 0: DefaultHashWait).
func NewGate(n int, wait time.Duration) *Gate {
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	if wait <= 0 {
		wait = DefaultHashWait
	}
	return &Gate{slots: make(chan struct{}, n), wait: wait}
}

func (g *Gate) acquire() error {
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	// Real time, not a clock.Clock: this bounds a wait for CPU, like an I/O timeout.
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-t.C:
		return ErrBusy
	}
}

func (g *Gate) release() { <-g.slots }

// Hash is Hash within the gate's bound.
func (g *Gate) Hash(password string, p Params) (string, error) {
	if err := g.acquire(); err != nil {
		return "", err
	}
	defer g.release()
	return Hash(password, p)
}

// Verify is Verify within the gate's bound; ErrBusy when no slot came free in time.
func (g *Gate) Verify(password, phc string) error {
	if err := g.acquire(); err != nil {
		return err
	}
	defer g.release()
	return Verify(password, phc)
}
