package phone

import (
	"testing"
	"time"

	"github.com/pquerna/otp/totp"

	"telematics/pkg/clock/clocktest"
)

const testSecret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"

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
		wantWait  bool          // whether the last code needed a wait
	}{
		{"early in a step: previous, current, next", 1 * time.Second, []int64{step - 1, step, step + 1}, false},
		{"near the step's end: the previous code is too close to expiring", 30*time.Second - CodeMargin + time.Second, []int64{step, step + 1}, false},
		{"all used: waits for the next step", 1 * time.Second, []int64{step - 1, step, step + 1, step + 2}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Unix(step*30, 0).Add(tc.into)
			clk := clocktest.New(start)
			a := NewAuthenticator(testSecret, clk)
			for i, s := range tc.wantSteps {
				got := make(chan string, 1)
				errc := make(chan error, 1)
				go func() {
					c, err := a.Code()
					got <- c
					errc <- err
				}()
				// A code that needs a wait waits on a timer of the clock: move the clock to
				// its due time once the timer is set, as the step boundary passes for a person.
				var c string
			wait:
				for {
					select {
					case c = <-got:
						break wait
					case <-time.After(time.Millisecond):
						if clk.Waiters() > 0 {
							clk.Advance(clk.Until(time.Unix((clk.Now().Unix()/30+1)*30, 0)) + 10*time.Millisecond)
						}
					}
				}
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
				if want := codeAt(t, s); c != want {
					t.Fatalf("code %d = %s, want the code of step %+d (%s)", i, c, s-step, want)
				}
			}
			if waited := clk.Now().After(start); waited != tc.wantWait {
				t.Fatalf("waited until %v from %v, want a wait: %v", clk.Now(), start, tc.wantWait)
			}
		})
	}
}
