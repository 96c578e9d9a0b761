// Package drill is the outage drill and the pieces the demo shares with it: a cloud (gateway
// with its embedded broker) that can be taken down and brought back on the same addresses and
// data, users who enroll TOTP and pair phone keys the way a person would, and a fleet whose
// cars serve the local link.
package drill

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/vehicle"
)

// Cloud is a gateway with its embedded broker on fixed loopback addresses, so that it can be
// stopped and started again on the same data while cars and phones keep their addresses.
type Cloud struct {
	Dir      string
	httpAddr string
	mqttAddr string
	log      *slog.Logger
	G        *server.Gateway
}

// NewCloud picks free loopback ports for a cloud whose data lives in dir.
func NewCloud(dir string, log *slog.Logger) (*Cloud, error) {
	c := &Cloud{Dir: dir, log: log}
	var err error
	if c.httpAddr, err = freeAddr(); err != nil {
		return nil, err
	}
	if c.mqttAddr, err = freeAddr(); err != nil {
		return nil, err
	}
	return c, nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Up starts the gateway and its broker (again).
func (c *Cloud) Up(ctx context.Context) error {
	cfg := server.DefaultConfig()
	cfg.Data = c.Dir
	cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = c.mqttAddr, "", c.httpAddr
	cfg.TwoFA.Mode = twofa.ModeEnrolled
	// A drill's owners send many commands in a burst; the per-user limit is not its subject.
	cfg.Commands.RatePerMinute, cfg.Commands.RateBurst = 6000, 1000
	var err error
	for attempt := 0; ; attempt++ {
		c.G, err = server.Start(ctx, cfg, server.Options{Logger: c.log})
		// A port just released may take a moment to be free again.
		if err == nil || attempt == 20 || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Down stops the gateway and the broker: the cloud outage.
func (c *Cloud) Down() error {
	if c.G == nil {
		return nil
	}
	err := c.G.Close()
	c.G = nil
	return err
}

// HTTPURL is the gateway's base URL.
func (c *Cloud) HTTPURL() string { return "http://" + c.httpAddr }

// BrokerURL is the broker's URL.
func (c *Cloud) BrokerURL() string { return "tcp://" + c.mqttAddr }

// Admin calls the admin API.
func (c *Cloud) Admin(ctx context.Context, method, path string, in, out any) error {
	return api.NewClient(c.HTTPURL(), c.G.AdminToken()).Do(ctx, method, path, in, out)
}

// Provision adds n cars.
func (c *Cloud) Provision(ctx context.Context, n int) ([]protocol.Credentials, error) {
	var creds []protocol.Credentials
	err := c.Admin(ctx, http.MethodPost, "/v1/admin/vehicles", api.AddVehiclesRequest{Count: n}, &creds)
	return creds, err
}

// AddUser creates a user, and makes them owner of vin unless vin is "".
func (c *Cloud) AddUser(ctx context.Context, name, password, vin string) error {
	err := whileBusy(ctx, func() error {
		return c.Admin(ctx, http.MethodPost, "/v1/admin/users", api.AddUserRequest{Username: name, Password: password}, nil)
	})
	if err != nil {
		return err
	}
	if vin == "" {
		return nil
	}
	return c.Admin(ctx, http.MethodPost, "/v1/admin/vehicles/"+vin+"/assign", api.AssignRequest{User: name, Role: protocol.RoleOwner}, nil)
}

// WaitSynced waits until every car acknowledged its current whitelist.
func (c *Cloud) WaitSynced(ctx context.Context, timeout time.Duration, vins ...string) error {
	return WaitFor(ctx, timeout, func() error {
		for _, vin := range vins {
			var v struct {
				Keys api.KeyStatus `json:"keys"`
			}
			if err := c.Admin(ctx, http.MethodGet, "/v1/admin/vehicles/"+vin, nil, &v); err != nil {
				return err
			}
			if v.Keys.Version == 0 || !v.Keys.InSync {
				return fmt.Errorf("%s acknowledged whitelist %d of %d", vin, v.Keys.AckedVersion, v.Keys.Version)
			}
		}
		return nil
	})
}

// WaitOnline waits until the gateway's twin shows every car online.
func (c *Cloud) WaitOnline(ctx context.Context, timeout time.Duration, vins ...string) error {
	return WaitFor(ctx, timeout, func() error {
		for _, vin := range vins {
			if tw, ok := c.G.Router().Twin(vin); !ok || tw.Status != protocol.StatusOnline {
				return fmt.Errorf("%s is not online", vin)
			}
		}
		return nil
	})
}

// WaitFor calls cond until it returns nil, every 25 ms, for at most timeout; then it returns
// cond's last error (or the context's).
func WaitFor(ctx context.Context, timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

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
		s, err = phone.Login(ctx, c.HTTPURL(), p.Name, p.Password, "")
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

// Fleet runs cars with their local link until Stop.
type Fleet struct {
	Link   *vehicle.LinkServer
	store  *vehicle.Store
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// StartFleet starts the cars of creds against brokerURL and their local link on loopback.
func StartFleet(ctx context.Context, dir, brokerURL string, creds []protocol.Credentials, log *slog.Logger) (*Fleet, error) {
	st, err := vehicle.OpenStore(filepath.Join(dir, vehicle.StoreFile))
	if err != nil {
		return nil, err
	}
	garage := vehicle.NewGarage()
	f := &Fleet{store: st, Link: vehicle.NewLinkServer(garage, log)}
	fctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		_, err := vehicle.RunFleet(fctx, vehicle.FleetConfig{BrokerURL: brokerURL, Creds: creds, Store: st, Garage: garage,
			TelemetryInterval: 2 * time.Second, ConnectRate: 2000, Logger: log,
			// The drill waits for the cars to come back; production cars keep mqttc's 30 s cap.
			MaxReconnectInterval: 2 * time.Second})
		if err != nil && !errors.Is(err, context.Canceled) {
			log.Error("fleet stopped", "err", err)
		}
	}()
	// The link serves the cars as RunFleet builds them.
	if err := WaitFor(ctx, 15*time.Second, func() error {
		if n := len(garage.VINs()); n < len(creds) {
			return fmt.Errorf("%d of %d cars built", n, len(creds))
		}
		return nil
	}); err != nil {
		f.Stop()
		return nil, err
	}
	if err := f.Link.Start("127.0.0.1:0"); err != nil {
		f.Stop()
		return nil, err
	}
	return f, nil
}

// Stop stops the link and the cars and closes their store.
func (f *Fleet) Stop() {
	f.Link.Close()
	f.cancel()
	f.wg.Wait()
	f.store.Close()
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
