package accounts

import (
	"errors"
	"testing"
	"time"

	"telematics/pkg/clock/clocktest"
)

func TestLockoutCountsBeforeTheCheck(t *testing.T) {
	c := clocktest.New(time.Unix(1_700_000_000, 0))
	l := NewLockout(3, time.Minute, 10*time.Minute, c)
	// Three checks at once use up what is left before a lockout: a fourth is refused unchecked.
	var atts []*Attempt
	for range 3 {
		a, _, err := l.Reserve("bob")
		if err != nil {
			t.Fatal(err)
		}
		atts = append(atts, a)
	}
	if _, _, err := l.Reserve("bob"); !errors.Is(err, ErrInFlight) {
		t.Fatalf("fourth check at once: %v, want ErrInFlight", err)
	}
	// A right password ends its check without counting; the others fail, the third locks.
	atts[0].Succeeded()
	if _, locked := atts[1].Failed(); locked {
		t.Fatal("locked after one failure")
	}
	a, _, err := l.Reserve("bob")
	if err != nil {
		t.Fatalf("reserve after a check ended: %v", err)
	}
	atts[2].Failed()
	until, locked := a.Failed()
	if !locked || !until.Equal(c.Now().Add(10*time.Minute)) {
		t.Fatalf("third failure: locked %t until %v", locked, until)
	}
	if _, u, err := l.Reserve("bob"); !errors.Is(err, ErrLockedOut) || !u.Equal(until) {
		t.Fatalf("during the lockout: %v %v", err, u)
	}
	// Other names are not affected; the lockout ends on time.
	if a, _, err := l.Reserve("carol"); err != nil {
		t.Fatal(err)
	} else {
		a.Cancel()
	}
	c.Advance(10 * time.Minute)
	if a, _, err := l.Reserve("bob"); err != nil {
		t.Fatalf("after the lockout: %v", err)
	} else {
		a.Cancel()
	}
}

func TestLockoutWindowSlidesAndClears(t *testing.T) {
	c := clocktest.New(time.Unix(1_700_000_000, 0))
	l := NewLockout(2, time.Minute, time.Hour, c)
	fail := func(name string) bool {
		a, _, err := l.Reserve(name)
		if err != nil {
			t.Fatalf("reserve %s: %v", name, err)
		}
		_, locked := a.Failed()
		return locked
	}
	fail("dave")
	c.Advance(time.Minute) // the first failure left the window
	if fail("dave") {
		t.Fatal("a failure outside the window counted")
	}
	if !fail("dave") || l.LockedUntil("dave").IsZero() {
		t.Fatal("two failures in the window did not lock")
	}
	if !l.Clear("dave") || !l.LockedUntil("dave").IsZero() {
		t.Fatal("Clear did not end the lockout")
	}
	if l.Clear("dave") {
		t.Fatal("a second Clear found something")
	}
	// Double ends of one attempt count once.
	a, _, _ := l.Reserve("erin")
	a.Failed()
	a.Failed()
	a.Cancel()
	if fail("erin") != true {
		t.Fatal("erin: the second failure should lock")
	}
}
