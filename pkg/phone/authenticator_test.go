package phone

import (
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
)

const testSecret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

// fakeClock is an injected clock whose sleep advances it.
type fakeClock struct {
	t     time.Time
	slept time.Duration
}

func (c *fakeClock) now() time.Time { return c.t }
func (c *fakeClock) sleep(d time.Duration) {
	c.slept += d
	c.t = c.t.Add(d)
}

func codeAt(t *testing.T, step int64) string {
	t.Helper()
	c, err := totp.GenerateCode(testSecret, time.Unix(step*30, 0))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestAuthenticatorSteps(t *testing.T) {
	const step = int64(58_000_000)
	cases := []struct {
		name      string
		into      time.Duration // time since the start of step
		wantSteps []int64       // steps of successive codes
		wantSlept bool          // whether the last code needed a wait
	}{
		{"early in a step: previous, current, next", 1 * time.Second, []int64{step - 1, step, step + 1}, false},
		{"near the step's end: the previous code is too close to expiring", 30*time.Second - CodeMargin + time.Second, []int64{step, step + 1}, false},
		{"all used: waits for the next step", 1 * time.Second, []int64{step - 1, step, step + 1, step + 2}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clk := &fakeClock{t: time.Unix(step*30, 0).Add(tc.into)}
			a := NewAuthenticator(testSecret)
			a.now, a.sleep = clk.now, clk.sleep
			for i, s := range tc.wantSteps {
				got, err := a.Code()
				if err != nil {
					t.Fatal(err)
				}
				if want := codeAt(t, s); got != want {
					t.Fatalf("code %d = %s, want the code of step %+d (%s)", i, got, s-step, want)
				}
			}
			if (clk.slept > 0) != tc.wantSlept {
				t.Fatalf("slept %v, want a wait: %v", clk.slept, tc.wantSlept)
			}
		})
	}
}
