package httpapi

import (
	"context"
	"slices"
	"strings"
	"testing"

	"telematics/gateway/audit"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// Provisioning answers each car's credentials: its VIN as client id and user name, a vehicle
// token whose id the store records, and the key that signs its whitelists. A count makes up
// well-formed VINs. It is audited.
func TestAddVehicles(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	creds, err := f.admin.AddVehicles(ctx, api.AddVehiclesRequest{VINs: []string{vinA}, Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(creds) != 3 || creds[0].VIN != vinA {
		t.Fatalf("credentials: %+v", creds)
	}
	pub, _ := sign.EncodePublic(f.signer.Public())
	for _, cr := range creds {
		if !protocol.ValidVIN(cr.VIN) || cr.ClientID != cr.VIN || cr.Username != cr.VIN || cr.GatewayKey != pub {
			t.Fatalf("credentials: %+v", cr)
		}
		c, err := f.api.Verifier.Verify(cr.Token)
		if err != nil || c.Subject != cr.VIN || c.Role != protocol.RoleVehicle {
			t.Fatalf("token of %s: %+v %v", cr.VIN, c, err)
		}
		v, err := f.admin.Vehicle(ctx, cr.VIN)
		if err != nil || v.TokenID != c.ID || v.CreatedMs != f.clock.Now().UnixMilli() {
			t.Fatalf("%s: %+v %v (token id %s)", cr.VIN, v, err, c.ID)
		}
	}
	if evs := f.audit(audit.Filter{Kind: audit.KindAdmin, Limit: 1}); evs[0].Outcome != "vehicles_added" || evs[0].Detail != "3 vehicles" {
		t.Fatalf("audit: %+v", evs[0])
	}
}

// Refused provisioning adds nothing: a batch with one car already there is refused whole.
func TestAddVehiclesRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	f.addVehicles(vinA)
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		req     api.AddVehiclesRequest
		status  int
		reason  protocol.Reason
		message string
	}{
		{"nothing", api.AddVehiclesRequest{}, 400, protocol.ReasonBadRequest, "give 1 to 100000"},
		{"negative count", api.AddVehiclesRequest{Count: -1, VINs: []string{vinB}}, 400, protocol.ReasonBadRequest, "give 1 to"},
		{"too many", api.AddVehiclesRequest{Count: MaxVehiclesPerRequest + 1}, 400, protocol.ReasonBadRequest, "give 1 to"},
		{"not a VIN", api.AddVehiclesRequest{VINs: []string{"1hgcm82633a004352"}}, 400, protocol.ReasonBadRequest, "is not a VIN"},
		{"given twice", api.AddVehiclesRequest{VINs: []string{vinB, vinB}}, 400, protocol.ReasonBadRequest, vinB + " given twice"},
		{"already there", api.AddVehiclesRequest{VINs: []string{vinB, vinA}}, 409, protocol.ReasonDuplicate, vinA},
	} {
		_, err := f.admin.AddVehicles(ctx, tc.req)
		if ae := wantError(t, err, tc.status, tc.reason); !strings.Contains(ae.Message, tc.message) {
			t.Errorf("%s: message %q, want %q", tc.name, ae.Message, tc.message)
		}
	}
	if vs, err := f.admin.Vehicles(ctx); err != nil || len(vs) != 1 || vs[0].VIN != vinA {
		t.Fatalf("vehicles after the refusals: %+v %v", vs, err)
	}
}

// The admin's view of a car: the stored car, its whitelist and the live twin.
func TestListAndShowVehicles(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	if vs, err := f.admin.Vehicles(ctx); err != nil || vs == nil || len(vs) != 0 {
		t.Fatalf("no cars: %#v %v (want an empty list, not null)", vs, err)
	}
	f.addVehicles(vinA, vinB)
	f.addUser("alice")
	if _, err := f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	k := f.pair(f.login("alice"), vinA)
	f.twins.set(twinOf(vinA))
	vs, err := f.admin.Vehicles(ctx)
	if err != nil || len(vs) != 2 {
		t.Fatalf("list: %+v %v", vs, err)
	}
	got := map[string]api.VehicleView{vs[0].VIN: vs[0], vs[1].VIN: vs[1]}
	a, b := got[vinA], got[vinB]
	if a.Users["alice"] != protocol.RoleOwner || a.Twin == nil || a.Twin.Status != "online" || a.Keys == nil ||
		a.Keys.Version != 1 || a.Keys.AckedVersion != 0 || a.Keys.InSync || len(a.Keys.Keys) != 1 || a.Keys.Keys[0].ID != k.ID {
		t.Fatalf("%s: %+v", vinA, a)
	}
	if b.Twin != nil || len(b.Users) != 0 || b.Keys == nil || b.Keys.Version != 0 || !b.Keys.InSync {
		t.Fatalf("%s: %+v", vinB, b)
	}
	show, err := f.admin.Vehicle(ctx, vinA)
	if err != nil || show.VIN != vinA || show.Keys.Version != 1 || show.Twin.TelemetrySeq != 42 {
		t.Fatalf("show: %+v %v", show, err)
	}
}

// Assign gives a role (and the user's keys with it), unassign takes it away, an admin revokes
// one key; each answers what changed and the whitelist version that carries it.
func TestAssignUnassignRevoke(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addVehicles(vinA)
	f.addUser("alice")
	f.addUser("bob")
	rc, err := f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner)
	if want := (api.RoleChange{VIN: vinA, User: "alice", Role: protocol.RoleOwner}); err != nil || rc != want {
		t.Fatalf("assign alice: %+v %v", rc, err)
	}
	f.pair(f.login("alice"), vinA) // version 1
	if _, err := f.admin.Assign(ctx, vinA, "bob", protocol.RoleDriver); err != nil {
		t.Fatal(err)
	}
	bobKey := f.pair(f.login("bob"), vinA) // version 2
	if bobKey.Role != protocol.RoleDriver {
		t.Fatalf("bob's key: %+v", bobKey)
	}
	rc, err = f.admin.Assign(ctx, vinA, "bob", protocol.RoleValet)
	if want := (api.RoleChange{VIN: vinA, User: "bob", Role: protocol.RoleValet, KeysChanged: 1, Version: 3}); err != nil || rc != want {
		t.Fatalf("bob made valet: %+v %v", rc, err)
	}
	rv, err := f.admin.AdminRevokeKey(ctx, vinA, bobKey.ID, true)
	if want := (api.Revocation{VIN: vinA, KeyID: bobKey.ID, User: "bob", Version: 4}); err != nil || rv != want {
		t.Fatalf("revoke bob's key, keeping his share: %+v %v", rv, err)
	}
	rc, err = f.admin.Unassign(ctx, vinA, "bob")
	if want := (api.RoleChange{VIN: vinA, User: "bob", Role: api.RoleNone}); err != nil || rc != want {
		t.Fatalf("unassign bob (his one key already revoked): %+v %v", rc, err)
	}
	v, _ := f.admin.Vehicle(ctx, vinA)
	if _, ok := v.Users["bob"]; ok || v.Users["alice"] != protocol.RoleOwner {
		t.Fatalf("users after unassign: %v", v.Users)
	}
	for _, tc := range []struct {
		name   string
		call   func() error
		status int
		reason protocol.Reason
	}{
		{"assign an unknown user", func() error { _, err := f.admin.Assign(ctx, vinA, "nobody", protocol.RoleDriver); return err }, 400, protocol.ReasonBadRequest},
		{"assign a role that is none of the four", func() error { _, err := f.admin.Assign(ctx, vinA, "bob", "root"); return err }, 400, protocol.ReasonBadRequest},
		{"assign on an unknown car", func() error { _, err := f.admin.Assign(ctx, vinB, "bob", protocol.RoleDriver); return err }, 404, protocol.ReasonVehicleUnknown},
		{"unassign who holds no role", func() error { _, err := f.admin.Unassign(ctx, vinA, "bob"); return err }, 400, protocol.ReasonBadRequest},
		{"unassign on a malformed VIN", func() error { _, err := f.admin.Unassign(ctx, "nope", "bob"); return err }, 400, protocol.ReasonBadRequest},
		{"revoke an unknown key", func() error { _, err := f.admin.AdminRevokeKey(ctx, vinA, "nokey", false); return err }, StatusOf(protocol.ReasonKeyUnknown), protocol.ReasonKeyUnknown},
	} {
		wantError(t, tc.call(), tc.status, tc.reason)
	}
	var outcomes []string // newest first
	for _, e := range f.audit(audit.Filter{VIN: vinA}) {
		outcomes = append(outcomes, e.Kind+":"+e.Outcome)
	}
	want := []string{"admin:unassigned", "admin:key_revoked", "admin:assigned", "keys:paired", "admin:assigned", "keys:paired", "admin:assigned"}
	if !slices.Equal(outcomes, want) {
		t.Fatalf("audit of %s: %q, want %q", vinA, outcomes, want)
	}
}

// Transfer leaves the new owner alone on the car; decommission removes everyone and, with
// retire_now, retires the credentials at once; a decommissioned car gets no new credentials
// and no users.
func TestTransferAndDecommission(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addVehicles(vinA, vinB)
	f.addUser("alice")
	f.addUser("carol")
	if _, err := f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	f.pair(f.login("alice"), vinA)
	tr, err := f.admin.Transfer(ctx, vinA, "carol")
	if err != nil || tr.VIN != vinA || tr.Owner != "carol" || !slices.Equal(tr.UsersRemoved, []string{"alice"}) || tr.KeysRemoved != 1 || tr.Version != 2 {
		t.Fatalf("transfer: %+v %v", tr, err)
	}
	if v, _ := f.admin.Vehicle(ctx, vinA); len(v.Users) != 1 || v.Users["carol"] != protocol.RoleOwner {
		t.Fatalf("users after transfer: %v", v.Users)
	}
	// An empty body is an empty request: the credentials wait for the car's acknowledgement.
	r := f.do("POST", "/v1/admin/vehicles/"+vinB+"/decommission", "Bearer "+adminToken, nil)
	if r.status != 200 {
		t.Fatalf("decommission without a body: %d %s", r.status, r.body)
	}
	d, err := f.admin.Decommission(ctx, vinA, true)
	if err != nil || d.VIN != vinA || !slices.Equal(d.UsersRemoved, []string{"carol"}) || d.Version != 3 || !d.CredentialsRetired {
		t.Fatalf("decommission: %+v %v", d, err)
	}
	v, _ := f.admin.Vehicle(ctx, vinA)
	if v.DecommissionedMs != f.clock.Now().UnixMilli() || v.RetiredMs == 0 || len(v.Users) != 0 {
		t.Fatalf("after decommission: %+v", v)
	}
	_, err = f.admin.ReissueCredentials(ctx, vinA)
	wantError(t, err, 400, protocol.ReasonBadRequest)
	_, err = f.admin.Assign(ctx, vinA, "carol", protocol.RoleOwner)
	wantError(t, err, 400, protocol.ReasonBadRequest)
}

// Reissuing gives a car a new token, recorded before the answer, and tells the broker which
// token is the car's now; the old one's id is no longer the car's.
func TestReissueCredentials(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	old := f.addVehicles(vinA)[0]
	cr, err := f.admin.ReissueCredentials(ctx, vinA)
	if err != nil || cr.VIN != vinA || cr.Token == old.Token {
		t.Fatalf("reissue: %+v %v", cr, err)
	}
	c, _ := f.api.Verifier.Verify(cr.Token)
	v, _ := f.admin.Vehicle(ctx, vinA)
	f.mu.Lock()
	told := f.retired[vinA]
	f.mu.Unlock()
	if v.TokenID != c.ID || !v.Reissued || told != c.ID {
		t.Fatalf("after reissue: view %+v, token id %s, broker told %q", v, c.ID, told)
	}
	_, err = f.admin.ReissueCredentials(ctx, vinB)
	wantError(t, err, 404, protocol.ReasonVehicleUnknown)
	_, err = f.admin.ReissueCredentials(ctx, "nope")
	wantError(t, err, 400, protocol.ReasonBadRequest)
}
