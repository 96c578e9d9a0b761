package twofa

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"telematics/gateway/kv"
	"testing"

	bolt "go.etcd.io/bbolt"
)

func TestLoadOrCreateKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "totp.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != KeySize {
		t.Fatalf("%d-byte key", len(k1))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatalf("second load: %v, same key %v", err, bytes.Equal(k1, k2))
	}
	// The file holds the form ParseKey reads, so it can be moved to the environment.
	b, _ := os.ReadFile(path)
	if k3, err := ParseKey(string(b)); err != nil || !bytes.Equal(k1, k3) {
		t.Fatalf("ParseKey(file): %v", err)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); !errors.Is(err, ErrBadKey) {
		t.Errorf("world-readable key file: %v, want ErrBadKey", err)
	}

	bad := filepath.Join(dir, "bad.key")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := LoadOrCreateKey(bad); !errors.Is(err, ErrBadKey) {
		t.Errorf("garbage key file: %v, want ErrBadKey", err)
	}
	if _, err := LoadOrCreateKey(filepath.Join(dir, "missing", "totp.key")); err == nil {
		t.Error("key created in a missing directory")
	}
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{7}, KeySize)
	cases := []struct {
		name string
		in   string
		ok   bool
	}{
		{"padded", base64.StdEncoding.EncodeToString(key), true},
		{"unpadded", base64.RawStdEncoding.EncodeToString(key), true},
		{"with newline", EncodeKey(key) + "\n", true},
		{"short", base64.StdEncoding.EncodeToString(key[:16]), false},
		{"long", base64.StdEncoding.EncodeToString(append(key, 1)), false},
		{"not base64", "!!!!", false},
		{"empty", "", false},
	}
	for _, tc := range cases {
		got, err := ParseKey(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Errorf("%s: %v is not ErrBadKey", tc.name, err)
			}
			if len(tc.in) > 8 && strings.Contains(err.Error(), strings.TrimSpace(tc.in)) {
				t.Errorf("%s: error repeats the key", tc.name)
			}
		} else if !bytes.Equal(got, key) {
			t.Errorf("%s: wrong key", tc.name)
		}
	}
}

func TestWrongKeyRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.enroll(t, "alice")
	other := bytes.Repeat([]byte{1}, KeySize)
	if _, err := New(f.kv, other, DefaultPolicy(), nil, nil); !errors.Is(err, ErrBadKey) {
		t.Fatalf("New with another key: %v, want ErrBadKey", err)
	}
	if _, err := New(f.kv, testKey[:16], DefaultPolicy(), nil, nil); !errors.Is(err, ErrBadKey) {
		t.Fatalf("New with a 16-byte key: %v, want ErrBadKey", err)
	}
	if _, err := New(f.kv, testKey, DefaultPolicy(), nil, nil); err != nil {
		t.Fatalf("New with the right key: %v", err)
	}
}

func TestSealOpen(t *testing.T) {
	t.Parallel()
	aead, err := newAEAD(testKey)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("12345678901234567890")
	s1, _ := seal(aead, "alice", secret)
	s2, _ := seal(aead, "alice", secret)
	if bytes.Equal(s1, s2) {
		t.Error("two seals of one secret are equal: nonce reused")
	}
	if got, err := unseal(aead, "alice", s1); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %v", err)
	}
	if _, err := unseal(aead, "bob", s1); err == nil {
		t.Error("alice's sealed secret opened for bob")
	}
	s1[len(s1)-1] ^= 1
	if _, err := unseal(aead, "alice", s1); err == nil {
		t.Error("altered sealed secret opened")
	}
	if _, err := unseal(aead, "alice", s1[:5]); err == nil {
		t.Error("truncated sealed secret opened")
	}
}

// txAuditor writes events into its own bucket inside the service's transaction.
type txAuditor struct{ recorder }

var bucketTestAudit = []byte("test_audit")

func (a *txAuditor) AuditTx(tx kv.Tx, e Event) error {
	seq, err := tx.NextSequence(bucketTestAudit)
	if err != nil {
		return err
	}
	return tx.Put(bucketTestAudit, []byte{byte(seq)}, []byte(e.Kind))
}

func TestTxAuditor(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	a := &txAuditor{}
	s, err := New(f.kv, testKey, DefaultPolicy(), f.clock, a)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	secret, _ := f.enroll(t, "alice")
	for range 5 {
		s.Verify("alice", "alice-1", wrongCode(t, secret, f.clock.Now()))
	}
	var kinds []string
	f.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTestAudit).ForEach(func(_, v []byte) error {
			kinds = append(kinds, string(v))
			return nil
		})
	})
	if got, want := strings.Join(kinds, ","), "enroll,confirm,failure,failure,failure,failure,failure,lockout"; got != want {
		t.Errorf("events in the transaction: %s, want %s", got, want)
	}
	if len(a.events) != 0 {
		t.Errorf("%d events also reported outside the transaction", len(a.events))
	}
}
