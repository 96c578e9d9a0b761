package server_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// TestAppLearnsTheMovedBroker: an app logs in while the gateway runs its embedded broker; the
// gateway then restarts on a standalone broker. The session still names the old broker, which
// nothing answers any more; GET /v1/session names the new one, and SendAuto, asking it, reaches
// the car through the cloud instead of quietly falling back to the local link.
func TestAppLearnsTheMovedBroker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	httpAddr := testutil.FreeAddr(t)
	g := startGateway(t, dir, func(c *server.Config) { c.HTTPAddr = httpAddr })
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	app, sess, key := loginKey(t, g, "alice", "", vin)
	app.Close()
	oldBroker := sess.BrokerURL
	g.Close()

	ext := standaloneBroker(t, dir)
	g = startGateway(t, dir, func(c *server.Config) { c.HTTPAddr, c.ExternalBroker = httpAddr, ext })
	runFleet(t, ext, creds)
	waitOnline(t, g, vin)
	waitSynced(t, g, vin)

	ctx := context.Background()
	current, err := sess.Client().CurrentBroker(ctx)
	if err != nil || current != ext || current == oldBroker {
		t.Fatalf("current broker %q, %v; want %s (the session has %s)", current, err, ext, oldBroker)
	}
	var checked string
	out, err := phone.SendAuto(ctx, phone.AutoOptions{Session: sess, Key: key, CloudOnly: true, CloudTimeout: 2 * time.Second,
		CurrentBroker: func(ctx context.Context) (string, error) { return sess.Client().CurrentBroker(ctx) },
		BrokerChecked: func(url string, err error) { checked = url }},
		phone.Request{VIN: vin, Action: protocol.ActionUnlock}, nil)
	if err != nil || out.Path != phone.PathCloud || out.Reply.Status != protocol.ReplyExecuted || checked != ext {
		t.Fatalf("send: %v, %+v, checked %q", err, out, checked)
	}

	// The endpoint wants the app's token.
	bad := *sess
	bad.Token = "not-a-token"
	var ae *api.Error
	if _, err := (&bad).Client().CurrentBroker(ctx); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized || ae.Reason != protocol.ReasonUnauthenticated {
		t.Fatalf("bad token: %v", err)
	}
}
