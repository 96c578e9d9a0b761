package twofa

import (
	"testing"
	"time"
)

// BenchmarkMatchStep is the CPU cost of checking one code: three HMAC-SHA1 codes and their
// constant-time comparison.
func BenchmarkMatchStep(b *testing.B) {
	secret := []byte("12345678901234567890")
	now := time.Unix(59, 0)
	for _, bc := range []struct{ name, code string }{{"right", "287082"}, {"wrong", "000000"}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, ok, _ := matchStep(secret, bc.code, now); ok != (bc.name == "right") {
					b.Fatal("unexpected result")
				}
			}
		})
	}
}

// BenchmarkVerify is one accepted code end to end: read, unseal, match, and a durable bbolt
// commit. Sequential calls each pay bbolt's batch delay and an fsync; parallel callers share
// them.
func BenchmarkVerify(b *testing.B) {
	b.Run("sequential", func(b *testing.B) {
		f := newFixture(b)
		secret, _ := f.enroll(b, "alice")
		b.ReportAllocs()
		for b.Loop() {
			f.clock.Advance(PeriodSeconds * time.Second) // a fresh step, so no replay
			if _, err := f.s.Verify("alice", "alice-1", code(b, secret, f.clock.Now())); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel-users", func(b *testing.B) {
		f := newFixture(b)
		const users = 64
		secrets := make([]string, users)
		names := make([]string, users)
		for i := range users {
			names[i] = "user" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			secrets[i], _ = f.enroll(b, names[i])
		}
		// Each iteration moves the clock a step and has every user verify once.
		b.ReportAllocs()
		for b.Loop() {
			f.clock.Advance(PeriodSeconds * time.Second)
			now := f.clock.Now()
			errs := make(chan error, users)
			for i := range users {
				c := code(b, secrets[i], now)
				go func() {
					_, err := f.s.Verify(names[i], names[i]+"-1", c)
					errs <- err
				}()
			}
			for range users {
				if err := <-errs; err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*users), "ns/verify")
	})
}
