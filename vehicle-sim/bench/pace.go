package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// paced calls fire(k) for k = 0, 1, … at rate calls per second over all k for d, each in its
// own goroutine (an open loop: a slow answer does not delay the next call), with at most
// maxInflight unanswered at once; a call due while that many are outstanding is not made and
// counted in skipped. lag records how late each call started against its schedule. It returns
// the calls made and the dispatch window, after every call returned.
func paced(ctx context.Context, rate float64, d time.Duration, maxInflight int, lag *latency, fire func(k int)) (made, skipped int64, window time.Duration) {
	var (
		wg       sync.WaitGroup
		inflight atomic.Int64
	)
	start := time.Now()
	end := start.Add(d)
	for k := 0; ctx.Err() == nil; k++ {
		due := start.Add(time.Duration(float64(k) / rate * float64(time.Second)))
		if !due.Before(end) {
			break
		}
		// Sleep only when more than 200 µs ahead: a shorter sleep oversleeps by about as much.
		if wait := time.Until(due); wait > 200*time.Microsecond {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
		lag.record(max(time.Since(due), 0))
		if inflight.Load() >= int64(maxInflight) {
			skipped++
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		made++
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			fire(k)
		}()
	}
	window = time.Since(start)
	wg.Wait()
	return made, skipped, window
}
