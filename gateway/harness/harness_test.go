package harness

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"telematics/gateway/accounts"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

// Both kinds of cloud come back on the addresses they had, with their data: the cars reconnect
// by themselves, and a person set up before the outage still has their key on the car.
func TestCloudDownAndUpKeepsAddressesAndData(t *testing.T) {
	for name, tc := range map[string]struct{ standalone, tls bool }{
		"embedded broker": {false, false}, "standalone broker": {true, false},
		"embedded broker over TLS": {false, true}, "standalone broker over TLS": {true, true},
	} {
		standalone := tc.standalone
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			c := MustStart(t, Options{StandaloneBroker: standalone, TLS: tc.tls, PasswordParams: &cheap})
			trust, err := c.ClientTLS()
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]string{false: "tcp://", true: "ssl://"}[tc.tls]; !strings.HasPrefix(c.BrokerURL(), want) {
				t.Fatalf("broker URL %s, want %s…", c.BrokerURL(), want)
			}
			creds, err := c.Provision(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			vins := []string{creds[0].VIN, creds[1].VIN}
			MustStartFleet(t, FleetOptions{BrokerURL: c.BrokerURL(), TLS: trust, Creds: creds})
			if err := c.WaitOnline(ctx, 15*time.Second, vins...); err != nil {
				t.Fatal(err)
			}
			p := &Person{Name: "alice", Password: "correct horse battery"}
			if err := c.AddUser(ctx, p.Name, p.Password, vins[0]); err != nil {
				t.Fatal(err)
			}
			if err := p.Login(ctx, c); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Enroll(ctx, c); err != nil {
				t.Fatal(err)
			}
			if _, err := p.Pair(ctx, vins[0]); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitSynced(ctx, 15*time.Second, vins[0]); err != nil {
				t.Fatal(err)
			}
			httpURL, brokerURL := c.HTTPURL(), c.BrokerURL()
			if standalone != (c.Broker != nil) {
				t.Fatalf("standalone %v, but the cloud's broker is %v", standalone, c.Broker)
			}

			if err := c.Down(); err != nil {
				t.Fatal(err)
			}
			if err := c.Up(ctx); err != nil {
				t.Fatal(err)
			}
			if c.HTTPURL() != httpURL || c.BrokerURL() != brokerURL {
				t.Fatalf("back on %s and %s, was on %s and %s", c.HTTPURL(), c.BrokerURL(), httpURL, brokerURL)
			}
			if err := c.WaitOnline(ctx, 30*time.Second, vins...); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitSynced(ctx, 15*time.Second, vins[0]); err != nil {
				t.Fatal(err)
			}
			if err := p.Login(ctx, c); err != nil {
				t.Fatalf("the user is gone after the restart: %v", err)
			}
		})
	}
}

// A cloud without a directory of its own makes a temporary one and removes it on Close.
func TestCloudRemovesItsTemporaryDirectory(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	c, err := Start(context.Background(), Options{PasswordParams: &cheap})
	if err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", dir, err)
	}
}

// With StandaloneBroker and TLS the broker trusts the gateway's device CA, as docker-compose's
// does: a car connects by its device certificate alone, and its old one is refused once the
// gateway reissued its credentials.
func TestStandaloneTLSBrokerTrustsTheDeviceCA(t *testing.T) {
	ctx := context.Background()
	c := MustStart(t, Options{StandaloneBroker: true, TLS: true, PasswordParams: &cheap})
	creds, err := c.Client().AddVehicles(ctx, api.AddVehiclesRequest{Count: 1, Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	connect := func(cr protocol.Credentials) error {
		cfg, err := c.ClientTLS()
		if err != nil {
			return err
		}
		pair, err := tls.X509KeyPair([]byte(cr.Cert), []byte(cr.CertKey))
		if err != nil {
			return err
		}
		cfg.Certificates = []tls.Certificate{pair}
		cl := paho.NewClient(paho.NewClientOptions().AddBroker(c.BrokerURL()).SetClientID(cr.VIN).SetTLSConfig(cfg).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second))
		tok := cl.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return errors.New("connect timed out")
		}
		if err := tok.Error(); err != nil {
			return err
		}
		cl.Disconnect(50)
		return nil
	}
	if err := connect(creds[0]); err != nil {
		t.Fatalf("the car's device certificate: %v", err)
	}
	fresh, err := c.Client().Reissue(ctx, creds[0].VIN, api.ReissueRequest{Cert: true})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 20*time.Second, func() error {
		if connect(creds[0]) == nil {
			return errors.New("the retired certificate is still admitted")
		}
		return nil
	})
	if err := connect(fresh); err != nil {
		t.Fatalf("the reissued certificate: %v", err)
	}
}
