package demo

import "testing"

// The demo's audit check must find a code or password wherever it stands on its own, and must
// not fail the demo because a timestamp or sequence number happens to contain the code's digits.
func TestContainsToken(t *testing.T) {
	tests := []struct {
		s, secret string
		want      bool
	}{
		{`{"detail":"code 123456 used"}`, "123456", true},
		{`{"detail":"123456"}`, "123456", true},
		{`123456`, "123456", true},
		{`{"detail":"code=123456&x"}`, "123456", true},
		{`{"ts":1763871234567,"seq":9}`, "871234", false},
		{`{"ts":1763871234567}`, "123456", false},
		{`{"ts":1234560,"x":"0123456"}`, "123456", false},
		{`{"ts":1234560,"detail":"123456"}`, "123456", true},
		{`{"detail":"correct-horse"}`, "correct-horse", true},
		{`{"detail":"xcorrect-horse"}`, "correct-horse", false},
		{`{"detail":"anything"}`, "", false},
	}
	for _, tc := range tests {
		if got := containsToken(tc.s, tc.secret); got != tc.want {
			t.Errorf("containsToken(%s, %q) = %v, want %v", tc.s, tc.secret, got, tc.want)
		}
	}
}
