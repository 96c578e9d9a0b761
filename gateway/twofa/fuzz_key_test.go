package twofa

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// keyErrorRE matches ParseKey's errors, which say what is wrong without quoting the input.
var keyErrorRE = regexp.MustCompile(`^` + regexp.QuoteMeta(ErrBadKey.Error()) + `: (not base64|\d+ bytes, want \d+)$`)

// FuzzParseKey parses the TOTP sealing key as the configuration, the environment or the
// totp.key file gives it: no panic, only KeySize bytes are accepted, the error never quotes
// the input (it may be a key), and EncodeKey gives text that parses to the same key.
func FuzzParseKey(f *testing.F) {
	key := bytes.Repeat([]byte{0x5a}, KeySize)
	f.Add(EncodeKey(key))
	f.Add(strings.TrimRight(EncodeKey(key), "=") + "\n")
	f.Add(EncodeKey(key[:KeySize-1]))
	f.Add("not base64 at all")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			if !keyErrorRE.MatchString(err.Error()) {
				t.Fatalf("error is not one of ParseKey's fixed messages (it may quote the key): %v", err)
			}
			return
		}
		if len(k) != KeySize {
			t.Fatalf("accepted a %d-byte key", len(k))
		}
		again, err := ParseKey(EncodeKey(k))
		if err != nil || !bytes.Equal(again, k) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
