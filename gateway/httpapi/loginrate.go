package httpapi

import (
	"net"
	"sync"

	"telematics/pkg/clock"
)

// maxTrackedAddrs bounds the client addresses the login limiter remembers (about 100 bytes
// each).
const maxTrackedAddrs = 1 << 16

// AddrLimiter is a token bucket per client address for password logins (the API's and the
// operator console's, each with its own): every attempt takes a
// token and a successful one gives it back, so an address is slowed down by its failures
// (wrong passwords, unknown or malformed names), never by its users' logins. IPv6 addresses
// count per /64, the block one subscriber usually gets.
type AddrLimiter struct {
	perMs float64 // tokens added per millisecond
	burst float64
	clock clock.Clock

	mu        sync.Mutex
	buckets   map[string]*addrBucket
	lastSweep int64
}

type addrBucket struct {
	tokens float64
	atMs   int64
}

// NewAddrLimiter returns a limiter of perMinute tokens a minute up to burst, on clk (nil: the
// real clock); nil (no limit) when perMinute is 0.
func NewAddrLimiter(perMinute float64, burst int, clk clock.Clock) *AddrLimiter {
	if perMinute <= 0 {
		return nil
	}
	return &AddrLimiter{perMs: perMinute / 60_000, burst: float64(max(burst, 1)), clock: clock.Or(clk),
		buckets: map[string]*addrBucket{}}
}

// Take takes a token for addr; false means the address is over its limit.
func (l *AddrLimiter) Take(addr string) bool {
	if l == nil {
		return true
	}
	key := addrKey(addr)
	nowMs := l.clock.Now().UnixMilli()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= maxTrackedAddrs {
			l.makeRoom(nowMs)
		}
		b = &addrBucket{tokens: l.burst, atMs: nowMs}
		l.buckets[key] = b
	}
	l.refill(b, nowMs)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// Refund gives back the token of a successful login.
func (l *AddrLimiter) Refund(addr string) {
	if l == nil {
		return
	}
	key := addrKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.buckets[key]; b != nil {
		b.tokens = min(b.tokens+1, l.burst)
	}
}

func (l *AddrLimiter) refill(b *addrBucket, nowMs int64) {
	if nowMs > b.atMs {
		b.tokens = min(l.burst, b.tokens+float64(nowMs-b.atMs)*l.perMs)
		b.atMs = nowMs
	}
}

// makeRoom forgets the addresses whose bucket is full again (they would start full anyway),
// walking the map at most once a second; otherwise, or if that freed nothing, one address at
// random. l.mu is held.
func (l *AddrLimiter) makeRoom(nowMs int64) {
	if nowMs-l.lastSweep < 1000 {
		for k := range l.buckets {
			delete(l.buckets, k)
			return
		}
	}
	l.lastSweep = nowMs
	for k, b := range l.buckets {
		l.refill(b, nowMs)
		if b.tokens >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < maxTrackedAddrs {
		return
	}
	for k := range l.buckets {
		delete(l.buckets, k)
		return
	}
}

// addrKey is the address an IPv4 client is counted under, or the /64 of an IPv6 one.
func addrKey(addr string) string {
	ip := net.ParseIP(addr)
	if ip == nil {
		return addr
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
