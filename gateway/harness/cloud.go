// Package harness starts the telematics system in one process for the demo, the outage drill
// and the tests: a gateway with its embedded broker (or a standalone broker and the gateway on
// it), a fleet of simulated cars with their local link, and people who log in, enroll TOTP and
// pair phone keys, all on loopback ports and in temporary directories. Start and StartFleet
// return errors for the binaries; MustStart and MustStartFleet fail a test and stop everything
// in its cleanup (nats-server's RunServer is the model).
package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"telematics/gateway/accounts"
	"telematics/gateway/server"
	"telematics/pkg/api"
	"telematics/pkg/broker"
	"telematics/pkg/devicecert"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/tlsconf"
)

// TB is the part of testing.TB the Must functions use, so that this package does not link the
// testing package into the gateway binary.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Options shape a cloud.
type Options struct {
	// Dir holds the gateway's data; "" means a temporary directory that Close removes
	// (MustStart: the test's TempDir).
	Dir    string
	Logger *slog.Logger
	// StandaloneBroker runs the broker (pkg/broker) on a port of its own, trusting the
	// gateway's signing key, and the gateway on it as on an external broker, instead of the
	// gateway's embedded broker.
	StandaloneBroker bool
	// PasswordParams is the password hashing cost; nil is the gateway's default. Tests pass a
	// cheap one.
	PasswordParams *accounts.Params
	// Store is the gateway's store URL (server.Config.Store): "" is the bbolt file of Dir;
	// EtcdStore(endpoints) an etcd (internal/etcdtest), which several clouds can share: give
	// them the same Dir too, so that they share the signing and TOTP sealing keys.
	Store string
	// StorePrefix is the key prefix on etcd; "" is the gateway's default.
	StorePrefix string
	// TLS runs every connection over TLS: the gateway's plain listeners are off, HTTPURL and
	// BrokerURL are https:// and ssl://, verified with the local CA the gateway makes in Dir
	// (CAFile; ClientTLS for cars), and a standalone broker listens with TLS only, trusting
	// the gateway's device CA (--client-ca) for cars' device certificates.
	TLS bool
	// Configure adjusts the gateway's configuration (server.DefaultConfig) after the harness
	// set its data directory, its store, its loopback addresses and, with StandaloneBroker,
	// the broker.
	Configure func(*server.Config)
}

// EtcdStore is the store URL of the etcd members at endpoints (client URLs such as
// http://127.0.0.1:2379, as internal/etcdtest gives them).
func EtcdStore(endpoints []string) string {
	hosts := make([]string, len(endpoints))
	for i, e := range endpoints {
		hosts[i] = strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://")
	}
	return "etcd://" + strings.Join(hosts, ",")
}

// ManyPeople is a Configure for the demo and the drill: many owners send commands in a burst,
// and the per-user command rate is not what they show.
func ManyPeople(cfg *server.Config) {
	cfg.Commands.RatePerMinute, cfg.Commands.RateBurst = 6000, 1000
}

// Cloud is a gateway with its broker on loopback addresses that stay the same across Down
// and Up, so that it can be stopped and started again on the same data while cars and phones
// keep their addresses.
type Cloud struct {
	Dir string
	G   *server.Gateway
	// Broker is the standalone broker (Options.StandaloneBroker) while the cloud is up.
	Broker *broker.Broker

	o          Options
	log        *slog.Logger
	tmp        string // a temporary Dir to remove on Close
	httpAddr   string // "" until the first Up picked a port
	mqttAddr   string
	tlsAddr    string // MQTT over TLS
	httpsAddr  string
	brokerAddr string // the standalone broker's
}

// NewCloud prepares a cloud whose data lives in dir (or a temporary directory if dir is ""),
// without starting it.
func NewCloud(o Options) (*Cloud, error) {
	c := &Cloud{Dir: o.Dir, o: o, log: o.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.Dir == "" {
		tmp, err := os.MkdirTemp("", "gateway-harness-")
		if err != nil {
			return nil, err
		}
		c.Dir, c.tmp = tmp, tmp
	}
	return c, nil
}

// Start prepares a cloud and starts it. Close stops it.
func Start(ctx context.Context, o Options) (*Cloud, error) {
	c, err := NewCloud(o)
	if err != nil {
		return nil, err
	}
	if err := c.Up(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// MustStart starts a cloud for a test, its data in the test's TempDir unless o.Dir is set; the
// test's cleanup stops it.
func MustStart(t TB, o Options) *Cloud {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	c, err := Start(context.Background(), o)
	if err != nil {
		t.Fatalf("start the gateway: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Up starts the gateway and its broker (again). The first start takes free ports; the next
// ones take the same ports again.
func (c *Cloud) Up(ctx context.Context) error {
	if c.G != nil {
		return errors.New("the cloud is already up")
	}
	cfg := server.DefaultConfig()
	cfg.Data = c.Dir
	cfg.Store = c.o.Store
	if c.o.StorePrefix != "" {
		cfg.StorePrefix = c.o.StorePrefix
	}
	cfg.MQTTAddr, cfg.WSAddr, cfg.HTTPAddr = or(c.mqttAddr, "127.0.0.1:0"), "", or(c.httpAddr, "127.0.0.1:0")
	cfg.TLS.MQTTAddr, cfg.TLS.WSAddr, cfg.TLS.HTTPAddr = or(c.tlsAddr, "127.0.0.1:0"), "", or(c.httpsAddr, "127.0.0.1:0")
	if c.o.TLS {
		cfg.MQTTAddr, cfg.HTTPAddr = "", ""
	}
	if c.o.StandaloneBroker {
		if err := c.startBroker(ctx); err != nil {
			return err
		}
		cfg.ExternalBroker = c.BrokerURL()
	}
	if c.o.Configure != nil {
		c.o.Configure(&cfg)
	}
	err := retryBusyPort(ctx, func() (err error) {
		c.G, err = server.Start(ctx, cfg, server.Options{Logger: c.log, PasswordParams: c.o.PasswordParams})
		return err
	})
	if err != nil {
		c.stopBroker()
		return err
	}
	c.httpAddr, c.httpsAddr = hostOf(c.G.HTTPURL()), hostOf(c.G.HTTPSURL())
	if c.o.TLS {
		c.httpAddr = ""
	}
	if !c.o.StandaloneBroker {
		c.mqttAddr, c.tlsAddr = hostOf(c.G.BrokerURL()), hostOf(c.G.BrokerTLSURL())
	}
	return nil
}

// startBroker starts the standalone broker again on the address it had (a free port the
// first time).
func (c *Cloud) startBroker(ctx context.Context) error {
	return retryBusyPort(ctx, func() error {
		cfg := broker.DefaultConfig()
		cfg.MQTTAddr, cfg.WSAddr, cfg.TLSMQTTAddr, cfg.TLSWSAddr = or(c.brokerAddr, "127.0.0.1:0"), "", "", ""
		if c.o.TLS {
			// The gateway's local CA, made here when the broker starts first: the gateway
			// finds it and serves a certificate of the same CA.
			ca, err := tlsconf.EnsureLocalCA(c.Dir, tlsconf.DefaultHosts, time.Now())
			if err != nil {
				return err
			}
			// The device CA likewise, as a standalone broker is given it (--client-ca).
			if _, _, err := devicecert.LoadOrCreate(c.Dir, nil); err != nil {
				return err
			}
			cfg.MQTTAddr, cfg.TLSMQTTAddr = "", or(c.brokerAddr, "127.0.0.1:0")
			cfg.TLSCert, cfg.TLSKey = ca.Files.Cert, ca.Files.Key
			cfg.ClientCA = filepath.Join(c.Dir, server.DeviceCAFile)
		}
		b, err := startBroker(c.Dir, cfg, c.log.With("component", "broker"))
		if err != nil {
			return err
		}
		c.Broker, c.brokerAddr = b, b.MQTTAddr()
		if c.o.TLS {
			c.brokerAddr = b.TLSMQTTAddr()
		}
		return nil
	})
}

// StartBroker starts a standalone broker (pkg/broker) on addr (no WebSocket listener),
// trusting the signing key in the gateway data directory dir, which it makes if the gateway
// has not run yet, as broker/main.go does with --gateway-pubkey. Close stops it.
func StartBroker(dir, addr string, log *slog.Logger) (*broker.Broker, error) {
	cfg := broker.DefaultConfig()
	cfg.MQTTAddr, cfg.WSAddr = addr, ""
	return startBroker(dir, cfg, log)
}

func startBroker(dir string, cfg broker.Config, log *slog.Logger) (*broker.Broker, error) {
	signer, _, err := sign.LoadOrCreate(filepath.Join(dir, server.SigningKeyFile))
	if err != nil {
		return nil, err
	}
	keys := []*ecdsa.PublicKey{signer.Public()}
	b, err := broker.New(cfg, keys, log)
	if err != nil {
		return nil, err
	}
	if err := b.FollowCarTokens(keys); err != nil {
		return nil, err
	}
	if err := b.Start(); err != nil {
		return nil, err
	}
	return b, nil
}

// MustStartBroker starts a standalone broker for a test on a free loopback port, trusting the
// gateway whose data directory is dir; the test's cleanup stops it.
func MustStartBroker(t TB, dir string) *broker.Broker {
	t.Helper()
	b, err := StartBroker(dir, "127.0.0.1:0", nil)
	if err != nil {
		t.Fatalf("start the broker: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func (c *Cloud) stopBroker() error {
	if c.Broker == nil {
		return nil
	}
	err := c.Broker.Close()
	c.Broker = nil
	return err
}

// retryBusyPort calls start until it succeeds, for about a second: a port just released may
// take a moment to be free again.
func retryBusyPort(ctx context.Context, start func() error) error {
	for attempt := 0; ; attempt++ {
		err := start()
		if err == nil || attempt == 20 || ctx.Err() != nil {
			return err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// hostOf is the HOST:PORT of a URL.
func hostOf(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return ""
	}
	return p.Host
}

// Down stops the gateway and the broker: the cloud outage.
func (c *Cloud) Down() error {
	var err error
	if c.G != nil {
		err = c.G.Close()
		c.G = nil
	}
	return errors.Join(err, c.stopBroker())
}

// Close stops the cloud and removes its data directory if it is a temporary one.
func (c *Cloud) Close() error {
	err := c.Down()
	if c.tmp != "" {
		err = errors.Join(err, os.RemoveAll(c.tmp))
		c.tmp = ""
	}
	return err
}

// HTTPURL is the gateway's base URL (HTTPSURL with TLS).
func (c *Cloud) HTTPURL() string {
	if c.o.TLS {
		return c.HTTPSURL()
	}
	return "http://" + c.httpAddr
}

// HTTPSURL is the gateway's HTTPS base URL; CAFile verifies it.
func (c *Cloud) HTTPSURL() string { return "https://" + c.httpsAddr }

// BrokerTLSURL is the embedded broker's MQTT over TLS URL; CAFile verifies it.
func (c *Cloud) BrokerTLSURL() string { return "ssl://" + c.tlsAddr }

// CAFile is the CA certificate of the gateway's TLS listeners (the local CA in Dir).
func (c *Cloud) CAFile() string { return filepath.Join(c.Dir, tlsconf.CAFile) }

// BrokerURL is the broker's URL: the embedded one's, or the standalone one's (ssl:// with
// TLS).
func (c *Cloud) BrokerURL() string {
	switch {
	case c.o.StandaloneBroker && c.o.TLS:
		return "ssl://" + c.brokerAddr
	case c.o.StandaloneBroker:
		return "tcp://" + c.brokerAddr
	case c.o.TLS:
		return c.BrokerTLSURL()
	}
	return "tcp://" + c.mqttAddr
}

// caFile is CAFile with TLS, else "" (plain URLs).
func (c *Cloud) caFile() string {
	if c.o.TLS {
		return c.CAFile()
	}
	return ""
}

// ClientTLS is what cars and phones verify the cloud with: nil without TLS.
func (c *Cloud) ClientTLS() (*tls.Config, error) {
	if !c.o.TLS {
		return nil, nil
	}
	return tlsconf.ClientConfig(c.CAFile())
}

// Client is a client of the gateway's API with the admin token.
func (c *Cloud) Client() *api.Client {
	cl := api.NewClient(c.HTTPURL(), c.G.AdminToken())
	if c.o.TLS {
		if hc, err := tlsconf.HTTPClient(c.CAFile(), api.DefaultTimeout); err == nil {
			cl.HTTP = hc
		}
	}
	return cl
}

// Provision adds n cars.
func (c *Cloud) Provision(ctx context.Context, n int) ([]protocol.Credentials, error) {
	return c.Client().AddVehicles(ctx, api.AddVehiclesRequest{Count: n})
}

// AddUser creates a user, and makes them owner of vin unless vin is "".
func (c *Cloud) AddUser(ctx context.Context, name, password, vin string) error {
	admin := c.Client()
	err := whileBusy(ctx, func() error { return admin.AddUser(ctx, name, password) })
	if err != nil {
		return err
	}
	if vin == "" {
		return nil
	}
	_, err = admin.Assign(ctx, vin, name, protocol.RoleOwner)
	return err
}

// WaitSynced waits until every car acknowledged its current whitelist.
func (c *Cloud) WaitSynced(ctx context.Context, timeout time.Duration, vins ...string) error {
	admin := c.Client()
	return WaitFor(ctx, timeout, func() error { return Synced(ctx, admin, vins...) })
}

// Synced says, through the admin API, whether every car acknowledged its current whitelist:
// nil if so, else which car is behind.
func Synced(ctx context.Context, admin *api.Client, vins ...string) error {
	for _, vin := range vins {
		v, err := admin.Vehicle(ctx, vin)
		if err != nil {
			return err
		}
		if v.Keys == nil {
			return fmt.Errorf("%s has no whitelist yet", vin)
		}
		if v.Keys.Version == 0 || !v.Keys.InSync {
			return fmt.Errorf("%s acknowledged whitelist %d of %d", vin, v.Keys.AckedVersion, v.Keys.Version)
		}
	}
	return nil
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
