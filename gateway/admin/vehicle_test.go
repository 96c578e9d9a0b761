package admin_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// vehicle add, list, show, assign, unassign, transfer, reissue and decommission: what people
// read, and --json in the shape of package api's types.
func TestVehicleCommands(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	g.addUser("alice")
	g.addUser("bob")
	g.addUser("carol")

	// add: lowercase VINs are upper-cased; --json is one line, the credentials vehicle-sim
	// run --fleet reads.
	r := g.run("", "vehicle", "add", strings.ToLower(vinA))
	if r.code != 0 || !strings.HasPrefix(r.stdout, "vin="+vinA+" client_id="+vinA+" username="+vinA+"\ntoken=") ||
		r.stderr != "1 vehicle added; keep the tokens secret (they are the cars' MQTT passwords)\n" {
		t.Fatalf("vehicle add: %+v", r)
	}
	out := g.ok("", "vehicle", "add", vinB, "--count", "1", "--json")
	var creds []protocol.Credentials
	decode(t, out, &creds)
	if len(lines(out)) != 1 || len(creds) != 2 || creds[0].VIN != vinB || !protocol.ValidVIN(creds[1].VIN) || creds[1].Token == "" {
		t.Fatalf("vehicle add --json: %s", out)
	}
	vinC := creds[1].VIN

	// assign and show
	if out := g.ok("", "vehicle", "assign", vinA, "alice", "--role", "owner"); out != "alice is now owner of "+vinA+" (no whitelist change)\n" {
		t.Fatalf("assign: %q", out)
	}
	g.pair("alice", vinA)
	out = g.ok("", "vehicle", "assign", vinA, "bob", "--role", "driver", "--json")
	var rc api.RoleChange
	decode(t, out, &rc)
	if rc != (api.RoleChange{VIN: vinA, User: "bob", Role: protocol.RoleDriver}) {
		t.Fatalf("assign --json: %+v", rc)
	}
	out = g.ok("", "vehicle", "show", vinA)
	for _, want := range []string{"VIN  ", vinA, "status  ", "never seen", "users  ", "alice:owner,bob:driver",
		"whitelist (car)", "v1 (v0) NOT YET ON THE CAR", "\nkeys:\n", "  ID  ", "alice  owner", "phone"} {
		if !strings.Contains(out, want) {
			t.Errorf("vehicle show lacks %q:\n%s", want, out)
		}
	}
	var v api.VehicleView
	decode(t, g.ok("", "vehicle", "show", vinA, "--json"), &v)
	if v.VIN != vinA || v.Users["bob"] != protocol.RoleDriver || v.Keys == nil || v.Keys.Version != 1 || len(v.Keys.Keys) != 1 {
		t.Fatalf("vehicle show --json: %+v", v)
	}

	// list: a header and a row per car, sorted by the gateway
	out = g.ok("", "vehicle", "list")
	ls := lines(out)
	if len(ls) != 4 || !slices.Equal(fields(ls[0]), []string{"VIN", "STATUS", "LAST TELEMETRY", "WHITELIST (CAR)", "USERS"}) {
		t.Fatalf("vehicle list:\n%s", out)
	}
	rows := map[string][]string{}
	for _, l := range ls[1:] {
		rows[fields(l)[0]] = fields(l)
	}
	if want := []string{vinA, "never seen", "-", "v1 (v0) NOT YET ON THE CAR", "alice:owner,bob:driver"}; !slices.Equal(rows[vinA], want) {
		t.Errorf("row of %s: %q, want %q", vinA, rows[vinA], want)
	}
	if want := []string{vinB, "never seen", "-", "none", "-"}; !slices.Equal(rows[vinB], want) {
		t.Errorf("row of %s: %q, want %q", vinB, rows[vinB], want)
	}
	var vs []api.VehicleView
	decode(t, g.ok("", "vehicle", "list", "--json"), &vs)
	if len(vs) != 3 {
		t.Fatalf("vehicle list --json: %+v", vs)
	}

	// unassign (or assign --role none), transfer
	if out := g.ok("", "vehicle", "unassign", vinA, "bob"); out != "bob removed from "+vinA+": 0 keys revoked (no whitelist change)\n" {
		t.Fatalf("unassign: %q", out)
	}
	g.ok("", "vehicle", "assign", vinA, "bob", "--role", "valet")
	if out := g.ok("", "vehicle", "assign", vinA, "bob", "--role", "none"); out != "bob removed from "+vinA+": 0 keys revoked (no whitelist change)\n" {
		t.Fatalf("assign --role none: %q", out)
	}
	if r := g.run("", "vehicle", "unassign", vinA, "bob"); r.code != 1 || !strings.Contains(r.stderr, "bad_request: bob holds no role on "+vinA) {
		t.Fatalf("unassign who holds no role: %+v", r)
	}
	decode(t, g.ok("", "vehicle", "unassign", vinA, "alice", "--json"), &rc)
	if rc != (api.RoleChange{VIN: vinA, User: "alice", Role: api.RoleNone, KeysChanged: 1, Version: 2}) {
		t.Fatalf("unassign --json: %+v", rc)
	}
	g.ok("", "vehicle", "assign", vinB, "alice", "--role", "owner")
	out = g.ok("", "vehicle", "transfer", vinB, "carol")
	if want := vinB + " now belongs to carol alone; removed: users alice, 0 keys (no whitelist change)\n" +
		"carol pairs a phone with: vehicle-sim app key pair " + vinB + " --totp CODE\n"; out != want {
		t.Fatalf("transfer:\n%q\nwant\n%q", out, want)
	}
	var tr api.Transfer
	decode(t, g.ok("", "vehicle", "transfer", vinB, "alice", "--json"), &tr)
	if tr.Owner != "alice" || !slices.Equal(tr.UsersRemoved, []string{"carol"}) {
		t.Fatalf("transfer --json: %+v", tr)
	}

	// reissue: --json is vehicle add --json's shape
	decode(t, g.ok("", "vehicle", "reissue", vinC, "--json"), &creds)
	if len(creds) != 1 || creds[0].VIN != vinC {
		t.Fatalf("reissue --json: %+v", creds)
	}
	if r := g.run("", "vehicle", "reissue", vinC); r.code != 0 || !strings.Contains(r.stderr, "its previous token is refused") {
		t.Fatalf("reissue: %+v", r)
	}

	// decommission: waiting for the car, or at once
	out = g.ok("", "vehicle", "decommission", vinB)
	if !strings.HasPrefix(out, vinB+" decommissioned: users alice and 0 keys removed; empty whitelist version 1 sent\n") ||
		!strings.Contains(out, "--retire-now") {
		t.Fatalf("decommission: %q", out)
	}
	var d api.Decommission
	decode(t, g.ok("", "vehicle", "decommission", vinC, "--retire-now", "--json"), &d)
	if d.VIN != vinC || !d.CredentialsRetired {
		t.Fatalf("decommission --retire-now --json: %+v", d)
	}
	out = g.ok("", "vehicle", "list")
	if !strings.Contains(out, "decommissioned (credentials retired)") ||
		!strings.Contains(out, "decommissioned (credentials retired once it acknowledges its empty whitelist)") {
		t.Fatalf("vehicle list after decommission:\n%s", out)
	}
	r = g.run("", "vehicle", "assign", vinC, "alice", "--role", "owner")
	if r.code != 1 || !strings.Contains(r.stderr, "bad_request: "+vinC+" is decommissioned") {
		t.Fatalf("assign on a decommissioned car: %+v", r)
	}
}

// key revoke: an owner's last key but one, then a driver's last key (their share ends unless
// --keep-share).
func TestKeyRevokeCommand(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	g.addUser("alice")
	g.addUser("bob")
	g.ok("", "vehicle", "add", vinA)
	g.ok("", "vehicle", "assign", vinA, "alice", "--role", "owner")
	g.ok("", "vehicle", "assign", vinA, "bob", "--role", "driver")
	alice := g.pair("alice", vinA)
	bob := g.pair("bob", vinA)
	out := g.ok("", "key", "revoke", vinA, "--", alice.ID) // key ids may start with -
	if want := fmt.Sprintf("key %s of alice revoked on %s in whitelist version 3 (the car applies it once it acknowledges it)\n", alice.ID, vinA); out != want {
		t.Fatalf("key revoke:\n%q\nwant\n%q", out, want)
	}
	var rv api.Revocation
	decode(t, g.ok("", "key", "revoke", vinA, "--keep-share", "--json", "--", bob.ID), &rv)
	if rv != (api.Revocation{VIN: vinA, KeyID: bob.ID, User: "bob", Version: 4}) {
		t.Fatalf("key revoke --keep-share --json: %+v", rv)
	}
	v, err := g.client().Vehicle(context.Background(), vinA)
	if err != nil || v.Users["bob"] != protocol.RoleDriver {
		t.Fatalf("bob's share was not kept: %+v %v", v.Users, err)
	}
	r := g.run("", "key", "revoke", vinA, "nokey")
	if r.code != 1 || !strings.Contains(r.stderr, "gateway admin key revoke: key_unknown: ") {
		t.Fatalf("revoke an unknown key: %+v", r)
	}
	// A key id that starts with - follows --.
	r = g.run("", "key", "revoke", vinA, "--", "-nokey")
	if r.code != 1 || !strings.Contains(r.stderr, "key_unknown") {
		t.Fatalf("revoke -nokey after --: %+v", r)
	}
}
