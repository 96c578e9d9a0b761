package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// /healthz answers while the process runs; /readyz only while the gateway can serve commands,
// else 503 with the cause. Neither needs a token.
func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, path := range []string{"/healthz", "/readyz"} {
		r := f.do("GET", path, "", nil)
		if r.status != 200 || !strings.Contains(string(r.body), `"status":"`) {
			t.Fatalf("%s: %d %s", path, r.status, r.body)
		}
	}
	if err := f.app().Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.notReady = errors.New("the bus is not connected")
	f.mu.Unlock()
	r := f.do("GET", "/readyz", "", nil)
	if r.status != 503 || strings.TrimSpace(string(r.body)) != `{"message":"the bus is not connected","status":"not ready"}` {
		t.Fatalf("not ready: %d %s", r.status, r.body)
	}
	var ae *api.Error
	if err := f.app().Ready(context.Background()); !errors.As(err, &ae) || ae.Status != 503 {
		t.Fatalf("Ready while not ready: %v", err)
	}
	if r := f.do("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz while not ready: %d", r.status)
	}
}

// The gateway key is public; the counters are the admin's.
func TestGatewayKeyAndStats(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	gk, err := f.app().GatewayKey(ctx)
	pub, _ := sign.EncodePublic(f.signer.Public())
	if err != nil || gk != (api.GatewayKey{KID: f.signer.KID(), PublicKey: pub}) {
		t.Fatalf("gateway key: %+v %v", gk, err)
	}
	st, err := f.admin.Stats(ctx)
	if err != nil || st != (api.Stats{CarsReporting: 1, PendingCommands: 2, TelemetryLost: 3, TelemetryReceived: 4}) {
		t.Fatalf("stats: %+v %v", st, err)
	}
	_, err = f.app().Stats(ctx)
	wantError(t, err, http.StatusUnauthorized, protocol.ReasonUnauthenticated)
}
