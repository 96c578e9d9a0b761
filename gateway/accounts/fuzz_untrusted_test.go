package accounts

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"testing"

	"golang.org/x/crypto/argon2"
)

// A stored hash with zero iterations, zero lanes, an empty key or a huge memory cost (a
// damaged or planted database record) is refused with an error; Verify used to panic inside
// argon2 on the first three and allocate whatever the record asked on the last.
func TestStoredHashWithBadParametersIsRefused(t *testing.T) {
	salt := base64.RawStdEncoding.EncodeToString([]byte("saltsaltsaltsalt"))
	key := base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte("k"), 32))
	for name, phc := range map[string]string{
		"zero iterations": fmt.Sprintf("$argon2id$v=19$m=64,t=0,p=1$%s$%s", salt, key),
		"zero lanes":      fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=0$%s$%s", salt, key),
		"empty key":       fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=1$%s$", salt),
		"4 TiB of memory": fmt.Sprintf("$argon2id$v=19$m=4294967295,t=1,p=1$%s$%s", salt, key),
	} {
		t.Run(name, func(t *testing.T) {
			if err := Verify("correct horse battery", phc); err == nil || err == ErrMismatch {
				t.Fatalf("Verify = %v, want an error about the stored hash", err)
			}
		})
	}
}

// FuzzDecodePasswordHash parses arbitrary stored password hashes (the users bucket of a
// database someone could have tampered with): no panic; what is accepted has parameters
// within the bounds, survives a round trip, and Verify on it returns (checked only for cheap
// parameters, so that the fuzzer stays fast).
func FuzzDecodePasswordHash(f *testing.F) {
	for _, p := range []Params{{MemoryKiB: 64, Iterations: 1, Parallelism: 1}, {MemoryKiB: 8, Iterations: 3, Parallelism: 2}} {
		h, err := Hash("correct horse battery", p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(h, "correct horse battery")
		f.Add(h, "wrong")
	}
	f.Add("$argon2id$v=19$m=64,t=0,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U", "x")
	f.Add("$argon2i$v=19$m=64,t=1,p=1$$", "x")
	f.Fuzz(func(t *testing.T, phc, password string) {
		p, salt, key, err := decodePHC(phc)
		if err != nil {
			return
		}
		if p.Iterations < 1 || p.Iterations > maxIterations || p.Parallelism < 1 || p.MemoryKiB > maxMemoryKiB ||
			len(salt) < minSaltLen || len(salt) > maxSaltLen || len(key) < minKeyLen || len(key) > maxKeyLen {
			t.Fatalf("accepted %q: %+v, salt %d, key %d bytes", phc, p, len(salt), len(key))
		}
		enc := base64.RawStdEncoding
		again := fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.MemoryKiB, p.Iterations, p.Parallelism,
			enc.EncodeToString(salt), enc.EncodeToString(key))
		p2, salt2, key2, err := decodePHC(again)
		if err != nil || p2 != p || !bytes.Equal(salt2, salt) || !bytes.Equal(key2, key) {
			t.Fatalf("round trip of %q via %q: %v", phc, again, err)
		}
		if p.MemoryKiB <= 1024 && p.Iterations <= 4 {
			_ = Verify(password, phc)
		}
	})
}
