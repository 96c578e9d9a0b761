package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/api/apitest"
	"telematics/pkg/protocol"
)

const (
	testVIN  = "1HGCM82633A004352"
	testUser = "alice"
)

func newFakeGateway(t *testing.T) *apitest.Gateway { return apitest.NewGateway(t, "app-token") }

func client(g *apitest.Gateway) *api.Client { return api.NewClient(g.URL, "app-token") }

func TestKeyRequests(t *testing.T) {
	g := newFakeGateway(t)
	status := api.KeyStatus{VIN: testVIN, Version: 3, AckedVersion: 2, Keys: []protocol.WhitelistKey{{ID: "k1", User: testUser, Role: protocol.RoleOwner}}}
	g.On("GET /v1/keys", func([]byte) (int, any) { return 200, status })
	g.On("POST /v1/keys/share", func(b []byte) (int, any) {
		var sh api.ShareRequest
		_ = json.Unmarshal(b, &sh)
		return 201, api.Share{VIN: sh.VIN, User: sh.User, Role: sh.Role, NotAfterMs: sh.NotAfterMs, Channels: sh.Channels}
	})
	g.On("POST /v1/keys/revoke", func([]byte) (int, any) { return 200, api.Revocation{VIN: testVIN, KeyID: "k1", Version: 4} })
	ctx, c := context.Background(), client(g)

	st, err := c.ListKeys(ctx, testVIN)
	if err != nil || st.Version != 3 || st.AckedVersion != 2 || st.InSync || len(st.Keys) != 1 {
		t.Fatalf("list %+v %v", st, err)
	}
	if req, _ := g.Last(); req != "GET /v1/keys?vin="+testVIN {
		t.Fatalf("request %s", req)
	}

	sh, err := c.ShareKey(ctx, api.ShareRequest{VIN: testVIN, User: "bob", Role: protocol.RoleValet, Channels: []string{protocol.ChannelLocal}, TOTP: "654321"})
	if err != nil || sh.User != "bob" {
		t.Fatalf("share %+v %v", sh, err)
	}
	req, body := g.Last()
	if req != "POST /v1/keys/share" || body["vin"] != testVIN || body["user"] != "bob" || body["role"] != "valet" ||
		body["not_after"] != 0.0 || body["totp"] != "654321" || len(body["channels"].([]any)) != 1 {
		t.Fatalf("%s %v", req, body)
	}

	rv, err := c.RevokeKey(ctx, api.RevokeRequest{VIN: testVIN, KeyID: "k1", TOTP: "111111", AllowLastOwner: true})
	if err != nil || rv.Version != 4 {
		t.Fatalf("revoke %+v %v", rv, err)
	}
	req, body = g.Last()
	if req != "POST /v1/keys/revoke" || body["key_id"] != "k1" || body["allow_last_owner"] != true || body["totp"] != "111111" {
		t.Fatalf("%s %v", req, body)
	}

	// Both shapes of the all-cars list.
	for _, shape := range []any{[]api.KeyStatus{status}, map[string]any{"cars": []api.KeyStatus{status}}} {
		g.On("GET /v1/keys", func([]byte) (int, any) { return 200, shape })
		cars, err := c.ListAllKeys(ctx)
		if err != nil || len(cars) != 1 || cars[0].VIN != testVIN {
			t.Fatalf("all cars from %T: %+v %v", shape, cars, err)
		}
	}
	if req, _ := g.Last(); req != "GET /v1/keys" {
		t.Fatalf("request %s", req)
	}
	// One car's answer is not a list of cars, and not "no cars" either.
	g.On("GET /v1/keys", func([]byte) (int, any) { return 200, status })
	if cars, err := c.ListAllKeys(ctx); err == nil {
		t.Fatalf("a single car's answer read as %+v", cars)
	}

	// Refusals arrive as *api.Error with the reason.
	g.On("POST /v1/keys/revoke", func([]byte) (int, any) {
		return 401, map[string]string{"error": "totp_required", "message": "key changes need a code"}
	})
	_, err = c.RevokeKey(ctx, api.RevokeRequest{VIN: testVIN, KeyID: "k1"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Reason != protocol.ReasonTOTPRequired || ae.Status != 401 {
		t.Fatalf("got %v", err)
	}
	if _, err := (&api.Client{}).ListKeys(ctx, testVIN); err == nil {
		t.Fatal("no gateway accepted")
	}
}
