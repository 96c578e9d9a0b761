package server_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admincli "telematics/gateway/admin"
	"telematics/gateway/audit"
	"telematics/gateway/server"
	"telematics/internal/testutil"
	"telematics/pkg/api"
	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// adminCLI runs `gateway admin ARGS…` against g and returns stdout, stderr and the exit code.
func adminCLI(t *testing.T, g *server.Gateway, dir string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	base := []string{"--server", g.HTTPURL(), "--token-file", filepath.Join(dir, server.AdminTokenFile)}
	code := admincli.Run(context.Background(), append(base, args...), admincli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb})
	return out.String(), errb.String(), code
}

// Issue 8, case 2, end to end: bob paired as driver; the admin makes him valet with `gateway
// admin vehicle assign … --role valet`; the router refuses his climate_on (forbidden) and still
// executes his unlock, and `--role none` takes him off the car.
func TestAdminRoleChangeRewritesKeysEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	addUser(t, g, "bob", "", "")
	runFleet(t, g.BrokerURL(), creds)
	waitOnline(t, g, vin)
	_, aliceSess, _ := loginKey(t, g, "alice", "", vin)
	if _, err := aliceSess.Client().ShareKey(context.Background(), api.ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleDriver}); err != nil {
		t.Fatal(err)
	}
	bob := login(t, g, "bob", "", vin)
	waitSynced(t, g, vin)
	expect(t, send(t, bob, vin, protocol.ActionClimateOn), protocol.ReplyExecuted, "")

	out, errs, code := adminCLI(t, g, dir, "vehicle", "assign", vin, "bob", "--role", "valet")
	if code != 0 || !strings.Contains(out, "bob is now valet of "+vin) || !strings.Contains(out, "1 of their keys rewritten") {
		t.Fatalf("assign valet: %d %q %q", code, out, errs)
	}
	waitSynced(t, g, vin)
	expect(t, send(t, bob, vin, protocol.ActionClimateOn), protocol.ReplyRejected, protocol.ReasonForbidden)
	expect(t, send(t, bob, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")

	out, errs, code = adminCLI(t, g, dir, "vehicle", "assign", vin, "bob", "--role", "none")
	if code != 0 || !strings.Contains(out, "bob removed from "+vin+": 1 key revoked") {
		t.Fatalf("assign none: %d %q %q", code, out, errs)
	}
	waitSynced(t, g, vin)
	expect(t, send(t, bob, vin, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonKeyRevoked)
}

// Issue 8, cases 1 and 15: after the owner revoked bob's key, and after the admin removed carol,
// `vehicle list` and `vehicle show` no longer name them on the car, and bob cannot pair again.
func TestVehicleListDropsRemovedUser(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startGateway(t, dir, nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	addUser(t, g, "bob", "", "")
	addUser(t, g, "carol", vin, protocol.RoleDriver)
	ctx := context.Background()
	_, aliceSess, _ := loginKey(t, g, "alice", "", vin)
	if _, err := aliceSess.Client().ShareKey(ctx, api.ShareRequest{VIN: vin, User: "bob", Role: protocol.RoleDriver}); err != nil {
		t.Fatal(err)
	}
	_, bobSess, bobKey := loginKey(t, g, "bob", "", vin)
	if out, _, _ := adminCLI(t, g, dir, "vehicle", "list"); !strings.Contains(out, "bob:driver") {
		t.Fatalf("bob not listed before: %q", out)
	}

	if _, err := aliceSess.Client().RevokeKey(ctx, api.RevokeRequest{VIN: vin, KeyID: bobKey.KID()}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := sign.Generate()
	_, err := phone.PairKey(ctx, bobSess, fresh, vin, "new phone", "")
	apiErr(t, err, http.StatusForbidden, protocol.ReasonForbidden)

	// The owner removes dave (shared, paired) through the app API.
	addUser(t, g, "dave", "", "")
	if _, err := aliceSess.Client().ShareKey(ctx, api.ShareRequest{VIN: vin, User: "dave", Role: protocol.RoleValet}); err != nil {
		t.Fatal(err)
	}
	loginKey(t, g, "dave", "", vin)
	rc, err := aliceSess.Client().RemoveUser(ctx, api.RemoveUserRequest{VIN: vin, User: "dave"})
	if err != nil || rc.KeysChanged != 1 || rc.Role != "none" || rc.Version == 0 {
		t.Fatalf("remove-user: %+v %v", rc, err)
	}
	_, err = aliceSess.Client().RemoveUser(ctx, api.RemoveUserRequest{VIN: vin, User: "alice"})
	apiErr(t, err, http.StatusBadRequest, protocol.ReasonBadRequest)

	out, errs, code := adminCLI(t, g, dir, "vehicle", "unassign", vin, "carol")
	if code != 0 || !strings.Contains(out, "carol removed from "+vin) {
		t.Fatalf("unassign: %d %q %q", code, out, errs)
	}
	out, _, code = adminCLI(t, g, dir, "vehicle", "list")
	if code != 0 || strings.Contains(out, "bob:") || strings.Contains(out, "carol:") || strings.Contains(out, "dave:") || !strings.Contains(out, "alice:owner") {
		t.Fatalf("vehicle list after the removals: %d %q", code, out)
	}
	out, _, code = adminCLI(t, g, dir, "vehicle", "show", vin, "--json")
	if code != 0 || strings.Contains(out, `"bob": "driver"`) || strings.Contains(out, `"carol"`) {
		t.Fatalf("vehicle show after the removals: %d %q", code, out)
	}
	evs, _ := g.Audit().Query(audit.Filter{VIN: vin, Kind: audit.KindAdmin})
	found := false
	for _, e := range evs {
		found = found || e.Outcome == "unassigned" && e.User == "carol"
	}
	if !found {
		t.Fatalf("unassign not audited: %+v", evs)
	}
}

// Issue 8, case 15, end to end: the admin revokes one key with `gateway admin key revoke`,
// transfers the car, then decommissions it: the car acknowledges the empty whitelist, its
// credentials are retired (its token refused from then on, also after a restart) and every
// step is audited.
func TestDecommissionRevokesEverythingEndToEnd(t *testing.T) {
	t.Parallel()
	dir, mqttAddr := t.TempDir(), testutil.FreeAddr(t)
	withAddr := func(c *server.Config) { c.MQTTAddr = mqttAddr }
	g := startGateway(t, dir, withAddr)
	creds := provision(t, g, 2)
	vin, other := creds[0].VIN, creds[1]
	addUser(t, g, "alice", vin, protocol.RoleOwner)
	addUser(t, g, "dave", "", "")
	runFleet(t, g.BrokerURL(), creds[:1])
	waitOnline(t, g, vin)
	alice, aliceSess, _ := loginKey(t, g, "alice", "", vin)
	second, _ := sign.Generate()
	if _, err := phone.PairKey(context.Background(), aliceSess, second, vin, "tablet", ""); err != nil {
		t.Fatal(err)
	}
	waitSynced(t, g, vin)

	// The admin takes the tablet's key away.
	out, errs, code := adminCLI(t, g, dir, "key", "revoke", vin, "--", second.KID()) // key ids may start with -
	if code != 0 || !strings.Contains(out, "key "+second.KID()+" of alice revoked on "+vin) {
		t.Fatalf("key revoke: %d %q %q", code, out, errs)
	}
	// The car goes to dave: alice's phone no longer opens it.
	out, errs, code = adminCLI(t, g, dir, "vehicle", "transfer", vin, "dave")
	if code != 0 || !strings.Contains(out, vin+" now belongs to dave alone; removed: users alice, 2 keys") {
		t.Fatalf("transfer: %d %q %q", code, out, errs)
	}
	waitSynced(t, g, vin)
	expect(t, send(t, alice, vin, protocol.ActionUnlock), protocol.ReplyRejected, protocol.ReasonKeyUnknown)
	dave := login(t, g, "dave", "", vin)
	waitSynced(t, g, vin)
	expect(t, send(t, dave, vin, protocol.ActionUnlock), protocol.ReplyExecuted, "")

	out, errs, code = adminCLI(t, g, dir, "vehicle", "decommission", vin)
	if code != 0 || !strings.Contains(out, vin+" decommissioned: users dave and 1 key removed") {
		t.Fatalf("decommission: %d %q %q", code, out, errs)
	}
	// The car acknowledges the empty whitelist; then its token is refused and it goes offline.
	var view struct {
		api.VehicleView
	}
	testutil.Eventually(t, 10*time.Second, func() error {
		admin(t, g, http.MethodGet, "/v1/admin/vehicles/"+vin, nil, &view)
		if view.Keys == nil || !view.Keys.InSync || len(view.Keys.Keys) != 0 || view.RetiredMs == 0 || view.DecommissionedMs == 0 {
			return fmt.Errorf("vehicle %+v keys %+v", view.VehicleView, view.Keys)
		}
		return nil
	})
	testutil.Eventually(t, 10*time.Second, func() error {
		if tw, _ := g.Router().Twin(vin); tw.Status != protocol.StatusOffline {
			return fmt.Errorf("car still %q", tw.Status)
		}
		return nil
	})
	checkTokens := func(g *server.Gateway) {
		t.Helper()
		if c, err := dialCar(g.BrokerURL(), creds[0]); !errors.Is(err, mqttc.ErrNotAuthorized) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("a decommissioned car's token: %v, want not authorized", err)
		}
		c, err := dialCar(g.BrokerURL(), other)
		if err != nil {
			t.Fatalf("another car's token: %v", err)
		}
		c.Close()
	}
	checkTokens(g)
	if _, errs, code := adminCLI(t, g, dir, "vehicle", "assign", vin, "dave", "--role", "owner"); code != 1 || !strings.Contains(errs, "decommissioned") {
		t.Fatalf("assign on a decommissioned car: %d %q", code, errs)
	}
	if _, errs, code := adminCLI(t, g, dir, "vehicle", "decommission", vin); code != 1 || !strings.Contains(errs, "duplicate") {
		t.Fatalf("decommission twice: %d %q", code, errs)
	}
	if _, errs, code := adminCLI(t, g, dir, "vehicle", "reissue", vin); code != 1 || !strings.Contains(errs, "decommissioned") {
		t.Fatalf("reissue of a decommissioned car: %d %q", code, errs)
	}
	if out, _, code := adminCLI(t, g, dir, "vehicle", "list"); code != 0 || !strings.Contains(out, "decommissioned (credentials retired)") {
		t.Fatalf("vehicle list: %d %q", code, out)
	}
	evs, _ := g.Audit().Query(audit.Filter{VIN: vin, Kind: audit.KindAdmin})
	seen := map[string]bool{}
	for _, e := range evs {
		seen[e.Outcome] = true
	}
	for _, want := range []string{"key_revoked", "transferred", "decommissioned"} {
		if !seen[want] {
			t.Errorf("no %q in the admin audit: %+v", want, evs)
		}
	}
	g.Close()
	g = startGateway(t, dir, withAddr)
	checkTokens(g)
}

// The offboarding endpoints refuse what they cannot do with reasons from the closed list.
func TestOffboardingAdminAPIRefusals(t *testing.T) {
	t.Parallel()
	g := startGateway(t, t.TempDir(), nil)
	creds := provision(t, g, 1)
	vin := creds[0].VIN
	addUser(t, g, "erin", vin, protocol.RoleDriver)
	call := func(path string, in any) error {
		return api.NewClient(g.HTTPURL(), g.AdminToken()).Do(context.Background(), http.MethodPost, path, in, nil)
	}
	const unknown = "1HGCM82633A004352"
	for _, tc := range []struct {
		path   string
		in     any
		status int
		reason protocol.Reason
	}{
		{"/v1/admin/vehicles/" + unknown + "/unassign", api.UnassignRequest{User: "erin"}, 404, protocol.ReasonVehicleUnknown},
		{"/v1/admin/vehicles/NOTAVIN/unassign", api.UnassignRequest{User: "erin"}, 400, protocol.ReasonBadRequest},
		{"/v1/admin/vehicles/" + vin + "/unassign", api.UnassignRequest{User: "nobody"}, 400, protocol.ReasonBadRequest},
		{"/v1/admin/vehicles/" + vin + "/unassign", map[string]any{"user": 7}, 400, protocol.ReasonBadRequest},
		{"/v1/admin/vehicles/" + vin + "/assign", api.AssignRequest{User: "nobody", Role: protocol.RoleDriver}, 400, protocol.ReasonBadRequest},
		{"/v1/admin/vehicles/" + vin + "/transfer", api.TransferRequest{Owner: "nobody"}, 400, protocol.ReasonBadRequest},
		{"/v1/admin/vehicles/" + unknown + "/transfer", api.TransferRequest{Owner: "erin"}, 404, protocol.ReasonVehicleUnknown},
		{"/v1/admin/vehicles/" + unknown + "/decommission", nil, 404, protocol.ReasonVehicleUnknown},
		{"/v1/admin/vehicles/" + vin + "/keys/nokey/revoke", nil, 403, protocol.ReasonKeyUnknown},
		{"/v1/admin/vehicles/" + vin + "/keys/" + strings.Repeat("k", 65) + "/revoke", nil, 400, protocol.ReasonBadRequest},
	} {
		apiErr(t, call(tc.path, tc.in), tc.status, tc.reason)
	}
	// Without the admin token, nothing.
	err := api.NewClient(g.HTTPURL(), "").Do(context.Background(), http.MethodPost, "/v1/admin/vehicles/"+vin+"/decommission", nil, nil)
	apiErr(t, err, http.StatusUnauthorized, protocol.ReasonUnauthenticated)
	var v api.VehicleView
	admin(t, g, http.MethodGet, "/v1/admin/vehicles/"+vin, nil, &v)
	if v.DecommissionedMs != 0 || v.Users["erin"] != protocol.RoleDriver {
		t.Fatalf("a refused request changed the car: %+v", v)
	}
}
