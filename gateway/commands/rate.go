package commands

import (
	"sync"
	"time"
)

// rateLimiter is a token bucket per user.
type rateLimiter struct {
	perSec float64
	burst  float64
	mu     sync.Mutex
	users  map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(perMinute float64, burst int) *rateLimiter {
	return &rateLimiter{perSec: perMinute / 60, burst: float64(burst), users: map[string]*bucket{}}
}

// allow takes one token from user's bucket; a limiter with no rate allows everything.
func (l *rateLimiter) allow(user string, now time.Time) bool {
	if l.perSec <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.users[user]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.users[user] = b
	}
	b.tokens += now.Sub(b.last).Seconds() * l.perSec
	if b.tokens > l.burst {
		b.tokens = l.burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// available reports whether user's bucket holds a token now, without taking it.
func (l *rateLimiter) available(user string, now time.Time) bool {
	if l.perSec <= 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.users[user]
	if !ok {
		return true
	}
	return b.tokens+now.Sub(b.last).Seconds()*l.perSec >= 1
}
