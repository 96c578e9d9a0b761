package accounts

import (
	"errors"
	"strings"
	"testing"
)

// Small parameters keep the test fast; the format and the comparison are what is tested.
var testParams = Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

func TestHashVerify(t *testing.T) {
	h, err := Hash("correct horse", testParams)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("unexpected PHC string %q", h)
	}
	if strings.Contains(h, "correct horse") {
		t.Fatal("hash contains the password")
	}
	if err := Verify("correct horse", h); err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	if err := Verify("correct hors", h); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong password: got %v, want ErrMismatch", err)
	}
	h2, _ := Hash("correct horse", testParams)
	if h == h2 {
		t.Fatal("two hashes of the same password are equal: salt not random")
	}
}

func TestVerifyRejectsMalformedHashes(t *testing.T) {
	for _, h := range []string{"", "$argon2i$v=19$m=64,t=1,p=1$c2FsdA$a2V5", "$argon2id$v=18$m=64,t=1,p=1$c2FsdA$a2V5", "$argon2id$v=19$m=x$c2FsdA$a2V5", "plaintext"} {
		if err := Verify("pw", h); err == nil {
			t.Errorf("Verify accepted malformed hash %q", h)
		}
	}
}

func TestOversizedPasswordRefused(t *testing.T) {
	if _, err := Hash(strings.Repeat("a", MaxPasswordBytes+1), testParams); err == nil {
		t.Fatal("oversized password hashed")
	}
}
