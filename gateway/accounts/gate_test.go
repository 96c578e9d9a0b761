package accounts

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var cheap = Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// No more than n hashes run at once, however many callers there are; a caller that cannot
// get a slot within the wait gets ErrBusy, and one that can gets the real answer.
func TestGateBoundsConcurrentHashes(t *testing.T) {
	phc, err := Hash("correct horse", cheap)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGate(2, time.Minute)
	var running, most atomic.Int32
	var wg sync.WaitGroup
	for range 40 {
		wg.Go(func() {
			if err := g.acquire(); err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			err := Verify("correct horse", phc)
			running.Add(-1)
			g.release()
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > 2 {
		t.Fatalf("%d hashes ran at once through a gate of 2", m)
	}

	// All slots taken: the next check is refused after the wait, without hashing.
	busy := NewGate(1, 20*time.Millisecond)
	if err := busy.acquire(); err != nil {
		t.Fatal(err)
	}
	if err := busy.Verify("correct horse", phc); !errors.Is(err, ErrBusy) {
		t.Fatalf("verify with every slot taken: %v, want ErrBusy", err)
	}
	if _, err := busy.Hash("x", cheap); !errors.Is(err, ErrBusy) {
		t.Fatalf("hash with every slot taken: %v, want ErrBusy", err)
	}
	busy.release()
	if err := busy.Verify("correct horse", phc); err != nil {
		t.Fatalf("verify with a free slot: %v", err)
	}
	if err := busy.Verify("wrong", phc); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong password: %v", err)
	}
}
