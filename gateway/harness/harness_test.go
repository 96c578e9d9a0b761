package harness

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"telematics/gateway/accounts"
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
