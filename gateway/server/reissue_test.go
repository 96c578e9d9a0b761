package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/broker"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// dialCar connects as a car with creds, once; the caller closes the client.
func dialCar(brokerURL string, c protocol.Credentials) (*mqttc.Paho, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return mqttc.Dial(ctx, mqttc.Options{BrokerURL: brokerURL, ClientID: c.ClientID, Username: c.Username, Password: c.Token, CleanSession: true})
}

// A car whose token may have leaked gets new credentials: its session opened with the old token
// is closed, the old token is refused from then on (also after a gateway restart), the new one
// is admitted, and the reissue is audited.
func TestReissueRetiresTheOldToken(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	g := startGateway(t, dir, func(c *server.Config) { c.MQTTAddr = mqttAddr })
	creds := provision(t, g, 2)
	old, other := creds[0], creds[1]
	runFleet(t, g.BrokerURL(), []protocol.Credentials{old})
	waitOnline(t, g, old.VIN)

	fresh := reissue(t, g, old.VIN)
	if fresh.VIN != old.VIN || fresh.Token == "" || fresh.Token == old.Token {
		t.Fatalf("reissued credentials: %+v", fresh)
	}
	// The running car, on its old token, is put off and cannot come back.
	testutil.Eventually(t, 5*time.Second, func() error {
		if tw, _ := g.Router().Twin(old.VIN); tw.Status != protocol.StatusOffline {
			return fmt.Errorf("car still %q", tw.Status)
		}
		return nil
	})
	checkTokens := func(g *server.Gateway) {
		t.Helper()
		if c, err := dialCar(g.BrokerURL(), old); !errors.Is(err, mqttc.ErrNotAuthorized) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("old token: %v, want not authorized", err)
		}
		for _, cr := range []protocol.Credentials{fresh, other} {
			c, err := dialCar(g.BrokerURL(), cr)
			if err != nil {
				t.Fatalf("%s's current token refused: %v", cr.VIN, err)
			}
			c.Close()
		}
	}
	checkTokens(g)

	evs, err := g.Audit().Query(audit.Filter{VIN: old.VIN, Kind: audit.KindAdmin})
	if err != nil || len(evs) != 1 || evs[0].Outcome != "credentials_reissued" {
		t.Fatalf("audit: %+v %v", evs, err)
	}
	if err := api.NewClient(g.HTTPURL(), g.AdminToken()).Do(context.Background(), http.MethodPost, "/v1/admin/vehicles/1HGCM82633A999999/credentials", struct{}{}, nil); err == nil {
		t.Fatal("reissue for an unknown car answered")
	} else {
		apiErr(t, err, http.StatusNotFound, protocol.ReasonVehicleUnknown)
	}

	// After a restart the store still knows which token is current.
	g.Close()
	g = startGateway(t, dir, func(c *server.Config) { c.MQTTAddr = mqttAddr })
	checkTokens(g)
}

// Behind the standalone broker (as docker-compose runs it) a reissue retires the old token
// there too: the gateway publishes the car's signed current token, the broker follows it. A
// broker that restarts (and forgets) learns it again when the gateway reconnects.
func TestReissueBehindStandaloneBroker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := testutil.FreeAddr(t)
	brokerURL := "tcp://" + addr
	startBroker := func() *broker.Broker {
		b, err := harness.StartBroker(dir, addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := startBroker()
	t.Cleanup(func() { b.Close() })
	g := startGateway(t, dir, func(c *server.Config) { c.ExternalBroker = brokerURL })
	creds := provision(t, g, 1)
	old := creds[0]
	if c, err := dialCar(brokerURL, old); err != nil {
		t.Fatalf("car's first token: %v", err)
	} else {
		c.Close()
	}
	fresh := reissue(t, g, old.VIN)
	retired := func() error {
		c, err := dialCar(brokerURL, old)
		if err == nil {
			c.Close()
			return errors.New("the standalone broker still admits the old token")
		}
		if !errors.Is(err, mqttc.ErrNotAuthorized) {
			return err
		}
		c, err = dialCar(brokerURL, fresh)
		if err != nil {
			return fmt.Errorf("new token refused: %w", err)
		}
		c.Close()
		return nil
	}
	testutil.Eventually(t, 5*time.Second, retired)

	b.Close()
	b = startBroker()
	testutil.Eventually(t, 10*time.Second, retired)
}
