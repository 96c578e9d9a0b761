package twofa

import (
	"testing"

	"telematics/pkg/protocol"
)

func TestOperatorSubjectsAreApartFromUsers(t *testing.T) {
	s := OperatorSubject("alice")
	if s != "alice@console" || protocol.ValidUser(s) {
		t.Fatalf("OperatorSubject(alice) = %q: it must be no user name", s)
	}
	if checkUser(s) != nil || checkUser(OperatorSubject("admin")) != nil {
		t.Error("operator subjects refused")
	}
	for _, bad := range []string{"@console", "Alice@console", "a/b@console", "alice@consolex", "alice@console@console"} {
		if checkUser(bad) == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
