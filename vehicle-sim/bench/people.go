package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// person is a user with a phone: a login session, a TOTP authenticator and a phone key.
type person struct {
	name, password string
	vin            string   // the (first) car they own ("" for the revoke scenario's friend)
	vins           []string // every car they own, vin first (--owners: cars j, j+M, j+2M, …)
	sess           *phone.Session
	key            *sign.Signer

	mu   sync.Mutex
	auth *phone.Authenticator

	codeMu sync.Mutex // one code-bearing retry at a time (pairElevated)
}

// code is what the person's authenticator shows (phone.Authenticator).
func (p *person) code() (string, error) {
	p.mu.Lock()
	a := p.auth
	p.mu.Unlock()
	if a == nil {
		return "", fmt.Errorf("%s has no authenticator: enroll first", p.name)
	}
	return a.Code()
}

// newPerson adds a user (owner of vin unless vin is ""), logs them in and enrolls TOTP.
func (w *keyWorld) newPerson(ctx context.Context, name, vin string) (*person, error) {
	pw := make([]byte, 12)
	rand.Read(pw)
	p := &person{name: name, password: "bench-" + hex.EncodeToString(pw), vin: vin}
	if err := w.s.admin().AddUser(ctx, name, p.password); err != nil {
		return nil, err
	}
	if vin != "" {
		if _, err := w.s.admin().Assign(ctx, vin, name, protocol.RoleOwner); err != nil {
			return nil, err
		}
	}
	sess, err := phone.Login(ctx, w.s.gatewayURL, name, p.password, "")
	if err != nil {
		return nil, fmt.Errorf("%s logs in: %w", name, err)
	}
	p.sess = sess
	auth, _, err := phone.EnrollAuthenticator(ctx, sess.Client())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p.mu.Lock()
	p.auth = auth
	p.mu.Unlock()
	if p.key, err = sign.Generate(); err != nil {
		return nil, err
	}
	return p, nil
}

// pair pairs p's phone key with vin: with a code, or on the login session a code elevated
// (withCode false).
func (p *person) pair(ctx context.Context, vin string, withCode bool) error {
	code := ""
	if withCode {
		var err error
		if code, err = p.code(); err != nil {
			return err
		}
	}
	if _, err := phone.PairKey(ctx, p.sess, p.key, vin, p.name+"'s phone", code); err != nil {
		return fmt.Errorf("%s pairs a key with %s: %w", p.name, vin, err)
	}
	return nil
}

// setUpOwners makes every car's owner: user, login, TOTP, a paired phone key. With --owners M
// (fleetOwners) M owners share the cars.
func (w *keyWorld) setUpOwners(ctx context.Context) error {
	if w.r.cfg.Owners > 0 {
		return w.setUpFleetOwners(ctx, w.r.cfg.Owners)
	}
	w.owners = make([]*person, len(w.creds))
	w.carOwner = make([]int, len(w.creds))
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.r.cfg.SetupConcurrency)
	for i := range w.creds {
		g.Go(func() error {
			vin := w.creds[i].VIN
			p, err := w.newPerson(gctx, fmt.Sprintf("bench%s_o%d", w.runID, i), vin)
			if err != nil {
				return err
			}
			p.vins = []string{vin}
			if err := p.pair(gctx, vin, true); err != nil {
				return err
			}
			w.owners[i], w.carOwner[i] = p, i
			if n := done.Add(1); n%500 == 0 {
				w.r.logf("%d/%d owners set up", n, len(w.creds))
			}
			return nil
		})
	}
	return g.Wait()
}

// spreadCars gives n cars to m owners round-robin: owner j gets cars j, j+m, j+2m, …; it
// returns each car's owner and each owner's cars (its first car is car j).
func spreadCars(n, m int) (carOwner []int, cars [][]int) {
	carOwner = make([]int, n)
	cars = make([][]int, m)
	for i := range n {
		j := i % m
		carOwner[i] = j
		cars[j] = append(cars[j], i)
	}
	return carOwner, cars
}

// setUpFleetOwners spreads the cars over m owners, as a fleet operator's accounts hold them:
// each owner is added, owns its first car, logs in, enrolls TOTP and pairs one phone key with
// that car with a code (m owners, cfg.SetupConcurrency at once: two argon2id hashes each);
// then every other car is assigned to its owner and paired with the owner's key on the login
// session that first code elevated, cfg.SetupConcurrency cars at once (each pairing is one
// key change of its own car, which the gateway commits concurrently with other cars').
func (w *keyWorld) setUpFleetOwners(ctx context.Context, m int) error {
	cfg := w.r.cfg
	carOwner, cars := spreadCars(len(w.creds), m)
	w.carOwner = carOwner
	w.owners = make([]*person, m)
	t0 := time.Now()
	var done atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cfg.SetupConcurrency)
	for j := range m {
		g.Go(func() error {
			first := w.creds[cars[j][0]].VIN
			p, err := w.newPerson(gctx, fmt.Sprintf("bench%s_f%d", w.runID, j), first)
			if err != nil {
				return err
			}
			p.vins = make([]string, len(cars[j]))
			for k, i := range cars[j] {
				p.vins[k] = w.creds[i].VIN
			}
			if err := p.pair(gctx, first, true); err != nil {
				return err
			}
			w.owners[j] = p
			if n := done.Add(1); n%100 == 0 {
				w.r.logf("%d/%d owners set up", n, m)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	rest := make([]int, 0, len(w.creds)-m)
	for i := range w.creds {
		if cars[carOwner[i]][0] != i {
			rest = append(rest, i)
		}
	}
	w.r.logf("%d owners set up in %.1fs (user, login, TOTP, first car paired); assigning and pairing their other %d cars, %d at a time",
		m, time.Since(t0).Seconds(), len(rest), cfg.SetupConcurrency)
	t1 := time.Now()
	done.Store(0)
	var retried atomic.Int64
	pairs, pctx := errgroup.WithContext(ctx)
	pairs.SetLimit(cfg.SetupConcurrency)
	for _, i := range rest {
		pairs.Go(func() error {
			p, vin := w.owners[carOwner[i]], w.creds[i].VIN
			if _, err := w.s.admin().Assign(pctx, vin, p.name, protocol.RoleOwner); err != nil {
				return fmt.Errorf("assign %s to %s: %w", vin, p.name, err)
			}
			withCode, err := p.pairElevated(pctx, vin)
			if err != nil {
				return err
			}
			if withCode {
				retried.Add(1)
			}
			if n := done.Add(1); n%1000 == 0 {
				w.r.logf("%d/%d further cars assigned and paired", n, len(rest))
			}
			return nil
		})
	}
	if err := pairs.Wait(); err != nil {
		return err
	}
	w.r.logf("%d further cars assigned and paired in %.1fs (%d needed a new code: the step-up had lapsed)",
		len(rest), time.Since(t1).Seconds(), retried.Load())
	return nil
}

// pairElevated pairs p's key with vin on the login session a code elevated; if the elevation
// lapsed (a long setup) the owner types a new code, one retry of the person's at a time so
// that concurrent retries do not spend each other's codes (a code of an earlier step than one
// accepted is refused as replayed). withCode reports whether it took a code.
func (p *person) pairElevated(ctx context.Context, vin string) (withCode bool, err error) {
	err = p.pair(ctx, vin, false)
	if !totpRequired(err) {
		return false, err
	}
	p.codeMu.Lock()
	defer p.codeMu.Unlock()
	// Another pairing of p's may have elevated the session again while this one waited.
	if err = p.pair(ctx, vin, false); !totpRequired(err) {
		return false, err
	}
	return true, p.pair(ctx, vin, true)
}

func totpRequired(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Reason == protocol.ReasonTOTPRequired
}

// allowApps puts the owners' app tokens into mosquitto's password file.
func (w *keyWorld) allowApps(ctx context.Context, ps []*person) error {
	if w.s.mosq == nil {
		return nil
	}
	users := make([]protocol.Credentials, len(ps))
	for i, p := range ps {
		users[i] = protocol.Credentials{VIN: p.name, ClientID: p.sess.ClientID, Username: p.name, Token: p.sess.Token}
	}
	return w.s.mosq.allow(ctx, users)
}
