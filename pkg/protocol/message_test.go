package protocol

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCarMessage(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "the trunk cannot open while the car moves", "the trunk cannot open while the car moves"},
		{"control characters dropped", "door\x1b[2Jopen\r\n\x00", "door[2Jopen"},
		{"empty", "", ""},
	} {
		if got := CarMessage(tc.in); got != tc.want {
			t.Errorf("%s: CarMessage(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
	// Long text is cut at MaxMessageBytes, never inside a character.
	long := CarMessage(strings.Repeat("é", MaxMessageBytes))
	if len(long) > MaxMessageBytes || !utf8.ValidString(long) || len(long) < MaxMessageBytes-1 {
		t.Errorf("cut of a long message: %d bytes, valid UTF-8 %v", len(long), utf8.ValidString(long))
	}
}
