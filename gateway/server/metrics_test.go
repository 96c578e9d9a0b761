package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// scrape reads GET /metrics with token (none: "") and returns the status and the body.
func scrape(t *testing.T, g *server.Gateway, token string) (int, string) {
	t.Helper()
	code, b := wire(t, g, http.MethodGet, "/metrics", token, nil)
	return code, string(b)
}

// The Prometheus endpoint counts what the audit log records (logins, refusals and their
// reasons, commands and results) and reads the fleet's state at each scrape; it needs the admin
// token and shows no secret.
func TestMetrics(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	creds := provision(t, g, 2)
	vin := creds[0].VIN
	addUser(t, g, "mia", vin, protocol.RoleOwner)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, creds[0].VIN, creds[1].VIN)
	if _, err := phone.Login(context.Background(), g.HTTPURL(), "mia", "not her password", ""); err == nil {
		t.Fatal("wrong password accepted")
	}
	app := login(t, g, "mia", "", vin)
	waitSynced(t, g, vin)
	expect(t, send(t, app, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")

	if code, _ := scrape(t, g, ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /metrics without the admin token: %d", code)
	}
	want := []string{
		`gateway_audit_events_total{kind="login",outcome="refused",reason="unauthenticated"} 1`,
		`gateway_audit_events_total{kind="login",outcome="ok",reason=""} 1`,
		`gateway_audit_events_total{kind="command",outcome="accepted",reason=""} 1`,
		`gateway_audit_events_total{kind="result",outcome="executed",reason=""} 1`,
		`gateway_cars_online 2`,
		`gateway_commands_pending 0`,
		`gateway_whitelists_unacknowledged 0`,
		`gateway_bus_connected 1`,
		`go_goroutines `,
	}
	var body string
	testutil.Eventually(t, 5*time.Second, func() error {
		code, b := scrape(t, g, g.AdminToken())
		if code != http.StatusOK {
			return fmt.Errorf("status %d", code)
		}
		body = b
		for _, w := range want {
			if !strings.Contains(body, w) {
				return fmt.Errorf("no %q in the metrics", w)
			}
		}
		return nil
	})
	for _, secret := range []string{password, g.AdminToken(), "not her password"} {
		if strings.Contains(body, secret) {
			t.Fatal("the metrics contain a secret")
		}
	}
	if !strings.Contains(body, "broker_clients_connected ") {
		t.Fatal("no broker gauges for the embedded broker")
	}
}
