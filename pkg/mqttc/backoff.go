package mqttc

import "time"

// Backoff is the reconnect schedule: capped exponential growth with full jitter. Attempt n
// waits a uniformly random time in [0, min(Max, Min·2^n)).
//
// The jitter is the point: when a broker restarts, every car loses its connection in the same
// instant, and a schedule without jitter (paho's own) brings them all back in the same second,
// again and again. Full jitter spreads the first wave evenly over Min and each later wave over
// a window twice as wide, so the broker sees a flat rate of CONNECTs instead of spikes (see
// "Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
type Backoff struct {
	Min time.Duration // window of the first attempt; > 0
	Max time.Duration // cap of the window; >= Min
}

// Delay returns the wait before attempt n (0 for the first) for a random number r in [0, 1).
// It is a pure function so that the schedule is tested exactly; the client draws r from
// Options.Rand.
func (b Backoff) Delay(attempt int, r float64) time.Duration {
	window := b.Max
	if attempt < 62 && b.Min > 0 {
		// Min<<attempt overflows for large attempts: stop doubling once past Max.
		if w := b.Min << attempt; w > 0 && w>>attempt == b.Min && w < b.Max {
			window = w
		}
	}
	if r < 0 {
		r = 0
	}
	if r >= 1 {
		r = 0.9999999999
	}
	return time.Duration(r * float64(window))
}
