package phone

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pquerna/otp/totp"

	"telematics/pkg/api"
	"telematics/pkg/clock"
)

// Authenticator is the authenticator app on a person's phone, for programs that act as that
// person (the demo, the outage drill, the bench): it shows the TOTP code of a time step after
// every code it showed before, since the gateway refuses an earlier or repeated step as
// totp_replayed. It is safe for concurrent use.
type Authenticator struct {
	mu       sync.Mutex
	secret   string
	lastStep int64
	clock    clock.Clock
}

// NewAuthenticator returns an authenticator for the base32 secret the gateway handed out at
// enrollment, telling the time by clk (nil: the real clock).
func NewAuthenticator(secret string, clk clock.Clock) *Authenticator {
	return &Authenticator{secret: secret, clock: clock.Or(clk)}
}

// CodeMargin is how much longer than that a previous step's code must stay acceptable for the
// authenticator to show it: a request to a busy gateway (CI under the race detector, setting
// up 1,000 owners at once) can take seconds, and a code looked at after the next step boundary
// is two steps old, which RFC 6238's ±1 step refuses.
const CodeMargin = 5 * time.Second

// Code returns a code of a step within one of now that no earlier code used: the previous
// step while more than CodeMargin of it stays acceptable, else the current one, else the next
// one. When all of them were used it waits for the next step, as a person would; one person
// gets at least two codes per 30 s without waiting.
func (a *Authenticator) Code() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		now := a.clock.Now()
		step := now.Unix() / 30
		stepEnd := time.Unix((step+1)*30, 0)
		first := step - 1
		if stepEnd.Sub(now) < CodeMargin {
			first = step
		}
		for s := first; s <= step+1; s++ {
			if s > a.lastStep {
				a.lastStep = s
				return totp.GenerateCode(a.secret, time.Unix(s*30, 0))
			}
		}
		t, next := a.clock.NewTimer(stepEnd.Sub(now) + 10*time.Millisecond)
		<-next
		t.Stop()
	}
}

// EnrollAuthenticator enrolls a TOTP authenticator for the client's user and confirms it with
// its first code, as a person does with the authenticator app on their phone. It returns the
// authenticator, on the real clock, and the recovery codes.
func EnrollAuthenticator(ctx context.Context, c *api.Client) (*Authenticator, []string, error) {
	e, err := c.EnrollTOTP(ctx, "")
	if err != nil {
		return nil, nil, fmt.Errorf("enroll TOTP: %w", err)
	}
	auth := NewAuthenticator(e.Secret, nil)
	code, err := auth.Code()
	if err != nil {
		return nil, nil, err
	}
	recovery, err := c.ConfirmTOTP(ctx, code)
	if err != nil {
		return nil, nil, fmt.Errorf("confirm TOTP: %w", err)
	}
	return auth, recovery, nil
}
