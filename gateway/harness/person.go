package harness

import (
	"context"
	"errors"
	"fmt"
	"time"

	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Person is a user with a phone: a login session, a TOTP authenticator and a phone key.
type Person struct {
	Name     string
	Password string
	Session  *phone.Session
	Key      *sign.Signer
	auth     *phone.Authenticator
}

// Code is what the person's authenticator shows (phone.Authenticator).
func (p *Person) Code() (string, error) {
	if p.auth == nil {
		return "", fmt.Errorf("%s has no authenticator: enroll first", p.Name)
	}
	return p.auth.Code()
}

// Login logs the person in.
func (p *Person) Login(ctx context.Context, c *Cloud) error {
	var s *phone.Session
	err := whileBusy(ctx, func() (err error) {
		s, err = phone.LoginCA(ctx, c.HTTPURL(), c.caFile(), p.Name, p.Password, "")
		return err
	})
	if err != nil {
		return fmt.Errorf("%s logs in: %w", p.Name, err)
	}
	p.Session = s
	return nil
}

// Enroll enrolls a TOTP authenticator and confirms it with its first code.
func (p *Person) Enroll(ctx context.Context, c *Cloud) (recovery []string, err error) {
	auth, recovery, err := phone.EnrollAuthenticator(ctx, p.Session.Client())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.Name, err)
	}
	p.auth = auth
	return recovery, nil
}

// Pair makes a phone key (if the person has none) and pairs it with vin, with a TOTP code.
func (p *Person) Pair(ctx context.Context, vin string) (protocol.WhitelistKey, error) {
	if p.Key == nil {
		k, err := sign.Generate()
		if err != nil {
			return protocol.WhitelistKey{}, err
		}
		p.Key = k
	}
	code, err := p.Code()
	if err != nil {
		return protocol.WhitelistKey{}, err
	}
	k, err := phone.PairKey(ctx, p.Session, p.Key, vin, p.Name+"'s phone", code)
	if err != nil {
		return k, fmt.Errorf("%s pairs a key with %s: %w", p.Name, vin, err)
	}
	return k, nil
}

// whileBusy runs call again, after a growing pause, while the gateway answers rate_limited
// (429) because its password hashes are all busy: a drill or demo that sets up many people
// at once is exactly such a burst, and a real app would come back the same way. Any other
// answer, or the end of ctx, ends it.
func whileBusy(ctx context.Context, call func() error) error {
	pause := 50 * time.Millisecond
	for {
		err := call()
		var apiErr *api.Error
		if !errors.As(err, &apiErr) || apiErr.Reason != protocol.ReasonRateLimited {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}
