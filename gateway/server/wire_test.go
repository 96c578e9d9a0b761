package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// wire sends one request to g and returns the status and the raw answer.
func wire(t *testing.T, g *server.Gateway, method, path, bearer string, in any) (int, []byte) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, g.HTTPURL()+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// strict decodes what the gateway sent into the contract's type T, refusing fields T does not
// know, and checks that T encodes back to the very same bytes: a field the server sends that
// package api lacks, or one whose name, order or omitempty differs, fails here.
func strict[T any](t *testing.T, what string, status, want int, body []byte) T {
	t.Helper()
	wireShapes = append(wireShapes, what+" "+shape(t, body))
	var v T
	if status != want {
		t.Fatalf("%s: status %d, want %d: %s", what, status, want, body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v in %s", what, err, body)
	}
	var again bytes.Buffer
	if err := json.NewEncoder(&again).Encode(v); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), body) {
		t.Fatalf("%s: the gateway sent\n%s\nthe contract's %T encodes\n%s", what, body, v, again.Bytes())
	}
	return v
}

// wireShapes are the shapes of the answers TestWireContract saw, in order.
var wireShapes []string

// shape is the structure of a JSON document, without its values: objects with their keys in
// order, the distinct shapes of an array's elements (sorted), and s, n, b or null for the scalars. A
// key that is a VIN (a map by car) reads VIN.
func shape(t *testing.T, body []byte) string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var walk func() string
	walk = func() string {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("shape of %s: %v", body, err)
		}
		switch tok := tok.(type) {
		case json.Delim:
			if tok == '{' {
				var parts []string
				for dec.More() {
					k, _ := dec.Token()
					key := k.(string)
					if protocol.ValidVIN(key) {
						key = "VIN"
					}
					parts = append(parts, key+":"+walk())
				}
				dec.Token()
				return "{" + strings.Join(parts, ",") + "}"
			}
			var elems []string
			for dec.More() {
				if e := walk(); !slices.Contains(elems, e) {
					elems = append(elems, e)
				}
			}
			dec.Token()
			slices.Sort(elems) // not the order of the elements, which may differ from run to run
			return "[" + strings.Join(elems, "|") + "]"
		case string:
			return "s"
		case json.Number:
			return "n"
		case bool:
			return "b"
		}
		return "null"
	}
	return walk()
}

// TestWireContract round-trips an answer of every kind the HTTP API gives through package
// api's types: the server and the clients cannot drift apart without this test failing.
func TestWireContract(t *testing.T) {
	// Not parallel: the test owns wireShapes, which starts empty on every run (-count=N).
	wireShapes = nil
	ctx := context.Background()
	g := startGateway(t, t.TempDir(), nil)
	adm := g.AdminToken()
	st, b := wire(t, g, http.MethodGet, "/healthz", "", nil)
	strict[api.Health](t, "healthz", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/readyz", "", nil)
	strict[api.Health](t, "readyz", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/gateway-key", "", nil)
	strict[api.GatewayKey](t, "gateway-key", st, 200, b)

	// Vehicles and users.
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles", adm, api.AddVehiclesRequest{Count: 2})
	creds := strict[[]protocol.Credentials](t, "add vehicles", st, 201, b)
	vin, vin2 := creds[0].VIN, creds[1].VIN
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		st, b = wire(t, g, http.MethodPost, "/v1/admin/users", adm, api.AddUserRequest{Username: u, Password: password})
		strict[api.UserAdded](t, "add user", st, 201, b)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin+"/assign", adm, api.AssignRequest{User: "alice", Role: protocol.RoleOwner})
	strict[api.RoleChange](t, "assign", st, 200, b)
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin, vin2)

	// The app: login, session, 2FA.
	st, b = wire(t, g, http.MethodPost, "/v1/login", "", api.LoginRequest{Username: "alice", Password: "wrong password!"})
	strict[api.ErrorBody](t, "refused login", st, 401, b)
	st, b = wire(t, g, http.MethodPost, "/v1/login", "", api.LoginRequest{Username: "alice", Password: password})
	login := strict[api.LoginResponse](t, "login", st, 200, b)
	tok := login.Token
	st, b = wire(t, g, http.MethodGet, "/v1/session", tok, nil)
	strict[api.SessionResponse](t, "session", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/2fa", tok, nil)
	strict[api.TOTPStatus](t, "2fa status", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/2fa/enroll", tok, api.TOTPCode{})
	e := strict[api.TOTPEnrollment](t, "2fa enroll", st, 200, b)
	auth := phone.NewAuthenticator(e.Secret, nil)
	code, err := auth.Code()
	if err != nil {
		t.Fatal(err)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/2fa/confirm", tok, api.TOTPCode{Code: code})
	strict[api.TOTPConfirmation](t, "2fa confirm", st, 200, b)

	// Keys: pair, list, share, revoke, remove a user.
	key, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := sign.EncodePublic(key.Public())
	st, b = wire(t, g, http.MethodPost, "/v1/keys/pair", tok, api.PairRequest{VIN: vin, PublicKey: pub, Label: "phone"})
	strict[protocol.WhitelistKey](t, "pair", st, 201, b)
	waitSynced(t, g, vin)
	st, b = wire(t, g, http.MethodGet, "/v1/keys?vin="+vin, tok, nil)
	ks := strict[api.KeyStatus](t, "keys of a car", st, 200, b)
	if !ks.InSync || len(ks.Keys) != 1 {
		t.Fatalf("keys %+v", ks)
	}
	st, b = wire(t, g, http.MethodGet, "/v1/keys", tok, nil)
	strict[[]api.KeyStatus](t, "keys of every car", st, 200, b)
	for _, u := range []string{"bob", "carol"} {
		st, b = wire(t, g, http.MethodPost, "/v1/keys/share", tok, api.ShareRequest{VIN: vin, User: u, Role: protocol.RoleDriver})
		strict[api.Share](t, "share", st, 201, b)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/keys/share", tok, api.ShareRequest{VIN: vin, User: "dave", Role: protocol.RoleValet,
		NotAfterMs: 4102444800000, Channels: []string{protocol.ChannelLocal}})
	strict[api.Share](t, "share with expiry and channels", st, 201, b)
	bob, err := phone.Login(ctx, g.HTTPURL(), "bob", password, "")
	if err != nil {
		t.Fatal(err)
	}
	bobKey, err := sign.Generate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := phone.PairKey(ctx, bob, bobKey, vin, "", ""); err != nil {
		t.Fatal(err)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/keys/revoke", tok, api.RevokeRequest{VIN: vin, KeyID: bobKey.KID()})
	strict[api.Revocation](t, "revoke", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/keys/remove-user", tok, api.RemoveUserRequest{VIN: vin, User: "carol"})
	strict[api.RoleChange](t, "remove user", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/keys/revoke", tok, api.RevokeRequest{VIN: vin, KeyID: "nokey"})
	strict[api.ErrorBody](t, "refused revocation", st, 403, b)
	waitSynced(t, g, vin)

	// The admin's view of cars, with twin (telemetry too) and whitelist, and their offboarding.
	testutil.Eventually(t, 10*time.Second, func() error {
		for _, v := range []string{vin, vin2} {
			if tw, _ := g.Router().Twin(v); tw.TelemetryMs == 0 {
				return fmt.Errorf("no telemetry from %s yet", v)
			}
		}
		return nil
	})
	st, b = wire(t, g, http.MethodGet, "/v1/admin/vehicles", adm, nil)
	strict[[]api.VehicleView](t, "vehicles", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/admin/vehicles/"+vin, adm, nil)
	v := strict[api.VehicleView](t, "vehicle", st, 200, b)
	if v.Twin == nil || v.Keys == nil || v.TokenID == "" || len(v.Users) == 0 {
		t.Fatalf("vehicle view %+v", v)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin2+"/assign", adm, api.AssignRequest{User: "carol", Role: protocol.RoleDriver})
	strict[api.RoleChange](t, "assign driver", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin2+"/unassign", adm, api.UnassignRequest{User: "carol"})
	strict[api.RoleChange](t, "unassign", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin2+"/transfer", adm, api.TransferRequest{Owner: "carol"})
	strict[api.Transfer](t, "transfer", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin+"/keys/"+key.KID()+"/revoke", adm, api.AdminRevokeRequest{})
	strict[api.Revocation](t, "admin revoke", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin+"/credentials", adm, struct{}{})
	strict[protocol.Credentials](t, "reissue", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+vin2+"/decommission", adm, api.DecommissionRequest{RetireNow: true})
	strict[api.Decommission](t, "decommission", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/admin/vehicles/"+vin2, adm, nil)
	strict[api.VehicleView](t, "decommissioned vehicle", st, 200, b)

	// The admin's users.
	st, b = wire(t, g, http.MethodGet, "/v1/admin/users", adm, nil)
	strict[[]api.UserView](t, "users", st, 200, b)
	for _, action := range []string{"unlock", "disable", "enable", "reset-2fa"} {
		st, b = wire(t, g, http.MethodPost, "/v1/admin/users/bob/"+action, adm, struct{}{})
		strict[api.UserChange](t, action, st, 200, b)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/admin/users/bob/password", adm, api.PasswordRequest{Password: "bob's new password"})
	strict[api.UserChange](t, "set password", st, 200, b)
	st, b = wire(t, g, http.MethodDelete, "/v1/admin/users/dave?from_cars=true", adm, nil)
	strict[api.UserChange](t, "delete user", st, 200, b)

	// The app's password and 2FA once more; then audit and stats.
	code, err = auth.Code()
	if err != nil {
		t.Fatal(err)
	}
	st, b = wire(t, g, http.MethodPost, "/v1/2fa/disable", tok, api.TOTPCode{Code: code})
	strict[api.TOTPDisabled](t, "2fa disable", st, 200, b)
	st, b = wire(t, g, http.MethodPost, "/v1/password", tok, api.PasswordRequest{OldPassword: password, Password: "alice's new password"})
	strict[api.PasswordChanged](t, "password", st, 200, b)
	for _, kind := range []string{"login", "keys", "2fa"} {
		st, b = wire(t, g, http.MethodGet, "/v1/admin/audit?user=alice&limit=1000&kind="+kind, adm, nil)
		if evs := strict[[]api.AuditEvent](t, "audit "+kind, st, 200, b); len(evs) < 2 {
			t.Fatalf("%d audit records of kind %s", len(evs), kind)
		}
	}
	st, b = wire(t, g, http.MethodGet, "/v1/admin/audit?user=nobody", adm, nil)
	strict[[]api.AuditEvent](t, "empty audit", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/admin/stats", adm, nil)
	strict[api.Stats](t, "stats", st, 200, b)
	// Device certificates: vehicle add --cert and reissue --cert.
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles", adm, api.AddVehiclesRequest{Count: 1, Cert: true})
	withCert := strict[[]protocol.Credentials](t, "add vehicles with certificate", st, 201, b)
	st, b = wire(t, g, http.MethodPost, "/v1/admin/vehicles/"+withCert[0].VIN+"/credentials", adm, api.ReissueRequest{Cert: true})
	strict[protocol.Credentials](t, "reissue with certificate", st, 200, b)
	st, b = wire(t, g, http.MethodGet, "/v1/admin/vehicles/"+withCert[0].VIN, adm, nil)
	strict[api.VehicleView](t, "vehicle with certificate", st, 200, b)
	// The shapes are those the gateway sent before package api existed (testdata/wire.shapes
	// was recorded from that server): the contract kept every byte of the format.
	golden := filepath.Join("testdata", "wire.shapes")
	got := strings.Join(wireShapes, "\n") + "\n"
	if os.Getenv("WIRE_SHAPES_UPDATE") != "" {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("the answers' shapes changed (left: %s, right: now):\n%s", golden, lineDiff(string(want), got))
	}
	if !slices.Equal(api.AuditKinds, audit.Kinds) {
		t.Fatalf("api.AuditKinds %v, the audit log's kinds %v", api.AuditKinds, audit.Kinds)
	}
}

// lineDiff lists the lines of a and b that differ, by number.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, fmt.Sprintf("%d: %s\n%d: %s", i+1, x, i+1, y))
		}
	}
	return strings.Join(out, "\n")
}
