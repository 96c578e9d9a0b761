package server_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/broker"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// sendUntil retries a command while the system reconnects, until an answer that retry does
// not want again, and returns it: each try lives briefly, so a request lost in a reconnect
// ends as expired and the next try goes out.
func sendUntil(t *testing.T, app *phone.App, vin string, action protocol.Action, retry func(protocol.Reply) bool) protocol.Reply {
	t.Helper()
	var last protocol.Reply
	testutil.Eventually(t, 20*time.Second, func() error {
		r, err := app.Send(context.Background(), phone.Request{VIN: vin, Action: action, Lifetime: 2 * time.Second}, nil)
		if err != nil {
			return err
		}
		last = r
		if retry(r) {
			return fmt.Errorf("%s %s", r.Status, r.Reason)
		}
		return nil
	})
	return last
}

// sendUntilExecuted retries until the command is executed.
func sendUntilExecuted(t *testing.T, app *phone.App, vin string, action protocol.Action) protocol.Reply {
	t.Helper()
	return sendUntil(t, app, vin, action, func(r protocol.Reply) bool { return r.Status != protocol.ReplyExecuted })
}

func TestGatewayRestartKeepsStateAndCarsReconnect(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	mqttAddr := testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g1 := startGateway(t, dir, withAddr)
	creds := provision(t, g1, 2)
	vin := creds[0].VIN
	addUser(t, g1, "alice", vin, protocol.RoleOwner)
	runFleet(t, "tcp://"+mqttAddr, creds)
	waitOnline(t, g1, vin)

	app, _, key := loginKey(t, g1, "alice", "", vin)
	waitSynced(t, g1, vin)
	cmd, env, err := phone.SignCommand(key, app.NewCommand(phone.Request{VIN: vin, Action: protocol.ActionUnlock}))
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(protocol.AppRequest{V: 1, Command: env})
	r, err := app.SendRaw(context.Background(), cmd.ID, time.UnixMilli(cmd.ExpiresAtMs), payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyExecuted, "")
	auditBefore, _ := g1.Audit().Count()
	app.Close()
	if err := g1.Close(); err != nil {
		t.Fatal(err)
	}

	g2 := startGateway(t, dir, withAddr)
	// Users, vehicles and the audit log survived.
	if n, _ := g2.Audit().Count(); n < auditBefore {
		t.Fatalf("audit log has %d records after restart, had %d", n, auditBefore)
	}
	var v map[string]any
	admin(t, g2, http.MethodGet, "/v1/admin/vehicles/"+vin, nil, &v)
	if users, _ := v["users"].(map[string]any); users["alice"] != "owner" {
		t.Fatalf("assignment lost across restart: %v", v)
	}
	// The cars reconnect by themselves and commands flow again.
	waitOnline(t, g2, vin)
	app2, _, _ := loginKey(t, g2, "alice", "")
	app2.SetKey(key)
	sendUntilExecuted(t, app2, vin, protocol.ActionLock)
	// A command id seen before the restart is still a duplicate.
	r, err = app2.SendRaw(context.Background(), cmd.ID, time.UnixMilli(cmd.ExpiresAtMs), payload, nil)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, r, protocol.ReplyRejected, protocol.ReasonDuplicate)
}

func TestBrokerRestartEverythingReconnects(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	signer, _, err := sign.LoadOrCreate(filepath.Join(dir, server.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	addr := testutil.FreeAddr(t)
	startBroker := func() *broker.Broker {
		cfg := broker.DefaultConfig()
		cfg.MQTTAddr, cfg.WSAddr = addr, ""
		b, err := broker.New(cfg, []*ecdsa.PublicKey{signer.Public()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := startBroker()
	defer func() { b.Close() }()

	g := startGateway(t, dir, func(c *server.Config) { c.ExternalBroker = "tcp://" + addr })
	creds := provision(t, g, 2)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	runFleet(t, "tcp://"+addr, creds)
	waitOnline(t, g, vin)
	app := login(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	expect(t, send(t, app, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() error {
		var out map[string]string
		err := api.NewClient(g.HTTPURL(), "").Do(context.Background(), http.MethodGet, "/readyz", nil, &out)
		if err == nil {
			return fmt.Errorf("gateway still ready with its broker down")
		}
		return nil
	})
	b = startBroker()
	// Nobody restarts anything: gateway, cars and phone reconnect with backoff; the gateway
	// publishes the retained whitelists again, which the new broker did not have.
	sendUntilExecuted(t, app, vin, protocol.ActionLock)
	pairedLater := login(t, g, "alice", "", vin)
	waitSynced(t, g, vin)
	sendUntilExecuted(t, pairedLater, vin, protocol.ActionUnlock)
}
