package twofa

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"telematics/gateway/kv"
)

// storedRecords returns the raw bytes of every record in bucket, as a real service wrote them:
// the fuzzers' seeds.
func storedRecords(t testing.TB, bucket []byte) [][]byte {
	f := newFixture(t)
	secret, _ := f.enroll(t, "alice")
	f.enroll(t, "bob")
	if _, err := f.s.Enroll("bob", "bob-web", code(t, secret, f.clock.Now())); err == nil {
		t.Fatal("bob re-enrolled with alice's code")
	}
	f.s.Enroll("carol", "carol-web", "")
	for range 3 {
		f.s.Verify("alice", "alice-1", wrongCode(t, secret, f.clock.Now()))
	}
	for range 5 {
		f.s.RecordFailure("dave", "dave-login", FactorPassword)
	}
	var out [][]byte
	f.kv.View(context.Background(), func(tx kv.Tx) error {
		return tx.Scan(bucket, nil, nil, func(_, v []byte) error {
			out = append(out, bytes.Clone(v))
			return nil
		})
	})
	return out
}

func FuzzDecodeTOTPRecord(f *testing.F) {
	for _, v := range storedRecords(f, bucketTOTP) {
		f.Add(v)
	}
	f.Add([]byte(`{"v":1,"pending":{"sealed":"AAAA"}}`))
	f.Add([]byte(`{"v":1,"active":{"sealed":"` + string(bytes.Repeat([]byte("A"), 64)) + `"},"last_step":-1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeTOTPRecord(b)
		if err != nil {
			return
		}
		// Whatever is accepted obeys the bounds the service relies on, and survives a round trip.
		if r.Active == nil && r.Pending == nil || r.LastStep < 0 || len(r.Recovery) > RecoveryCodeCount {
			t.Fatalf("accepted out-of-bounds record %+v", r)
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := decodeTOTPRecord(again)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, r, r2)
		}
	})
}

func FuzzDecodeLockRecord(f *testing.F) {
	for _, v := range storedRecords(f, bucketLockout) {
		f.Add(v)
	}
	f.Add([]byte(`{"v":1,"failures":[1,2,3],"locked_until":0}`))
	f.Add([]byte(`{"v":1,"locked_until":-5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeLockRecord(b)
		if err != nil {
			return
		}
		if len(r.Failures) > maxFailuresKept || r.LockedUntilMs < 0 {
			t.Fatalf("accepted out-of-bounds record %+v", r)
		}
		// Counting a failure on any accepted record keeps it within bounds, and a lockout it
		// starts lasts exactly LockoutDuration.
		p := DefaultPolicy()
		now := time.UnixMilli(1_800_000_000_000)
		locked := countFailure(r, now, p)
		if len(r.Failures) > maxFailuresKept || locked && r.LockedUntilMs != now.Add(p.LockoutDuration).UnixMilli() {
			t.Fatalf("after a failure: %+v (locked %v)", r, locked)
		}
		if _, err := decodeLockRecord(mustJSON(t, r)); err != nil {
			t.Fatalf("record after a failure does not decode: %v", err)
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzCode feeds untrusted codes, as an app sends them, to both matchers: no panic, and only
// the one right TOTP code or the one right recovery code is accepted.
func FuzzCode(f *testing.F) {
	secret := []byte("12345678901234567890") // RFC 6238 appendix B
	now := time.Unix(59, 0)                  // RFC 6238 test vector: 94287082 -> 287082
	recoveryCode := "abcd-efgh-ijkl-mn23"
	norm, _ := normalizeRecoveryCode(recoveryCode)
	hashes := [][]byte{recoveryHash("alice", norm)}
	for _, s := range []string{"287082", "287083", "", "28708", "2870822", "ABCD-EFGH-IJKL-MN23", recoveryCode, "١٢٣٤٥٦", "\x00\x00\x00\x00\x00\x00"} {
		f.Add(s)
	}
	valid := map[string]bool{}
	for st := int64(0); st <= 2; st++ {
		valid[code(f, b32NoPad.EncodeToString(secret), time.Unix(st*PeriodSeconds, 0))] = true
	}
	f.Fuzz(func(t *testing.T, c string) {
		step, ok, err := matchStep(secret, c, now)
		if err != nil {
			t.Fatal(err)
		}
		if ok != valid[c] || ok && (step < 0 || step > 2) {
			t.Fatalf("matchStep(%q) = %d, %v", c, step, ok)
		}
		if i := matchRecovery(hashes, "alice", c); i >= 0 {
			if n, _ := normalizeRecoveryCode(c); n != norm {
				t.Fatalf("accepted %q as a recovery code", c)
			}
		}
	})
}
