package keys

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

// share shares vin with user as role and pairs n phone keys of theirs; it returns the keys.
func (f *fixture) shareAndPair(user string, role protocol.Role, n int) []protocol.WhitelistKey {
	f.t.Helper()
	ctx := context.Background()
	if _, err := f.svc.Share(ctx, "alice", "s1", ShareRequest{VIN: vin, User: user, Role: role, TOTP: "123456"}); err != nil {
		f.t.Fatal(err)
	}
	return f.pair(user, n)
}

// pair pairs n new phone keys of user with vin.
func (f *fixture) pair(user string, n int) []protocol.WhitelistKey {
	f.t.Helper()
	var out []protocol.WhitelistKey
	for range n {
		_, pub := phoneKey(f.t)
		k, err := f.svc.Pair(context.Background(), user, "s-"+user, vin, pub, "", "123456")
		if err != nil {
			f.t.Fatalf("pair %s's key: %v", user, err)
		}
		out = append(out, k)
	}
	return out
}

// key is vin's current whitelist entry id.
func (f *fixture) key(id string) protocol.WhitelistKey {
	f.t.Helper()
	k, ok := f.svc.Whitelist(vin).Find(id)
	if !ok {
		f.t.Fatalf("key %s not on the whitelist", id)
	}
	return k
}

// role is user's role on vin ("" for none).
func (f *fixture) role(user string) protocol.Role {
	f.t.Helper()
	v, err := f.st.GetVehicle(vin)
	if err != nil {
		f.t.Fatal(err)
	}
	return v.Users[user]
}

// lastPublished is the newest whitelist published for vin, verified as the car would.
func (f *fixture) lastPublished() *protocol.Whitelist {
	f.t.Helper()
	f.bus.mu.Lock()
	defer f.bus.mu.Unlock()
	var env protocol.Envelope
	if err := json.Unmarshal(f.bus.msgs[len(f.bus.msgs)-1].Payload, &env); err != nil {
		f.t.Fatal(err)
	}
	wl, err := whitelist.Verify(env, vin, 0, []*ecdsa.PublicKey{f.ring.cur.Public()})
	if err != nil {
		f.t.Fatal(err)
	}
	return wl
}

func (f *fixture) audit(kind string) []audit.Event {
	f.t.Helper()
	lg, _ := audit.Open(f.st.KV())
	evs, err := lg.Query(audit.Filter{Kind: kind})
	if err != nil {
		f.t.Fatal(err)
	}
	return evs
}

// Issue 8, case 1: the owner revokes bob's only key, and bob cannot come back by making a new
// key and pairing it: his share ended with his last key.
func TestRevokedUserCannotPairAgain(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	bk := f.shareAndPair("bob", protocol.RoleDriver, 1)[0]
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: bk.ID, TOTP: "123456"}); err != nil {
		t.Fatal(err)
	}
	_, fresh := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "bob", "s2", vin, fresh, "", "123456"); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("bob pairs a new key after the owner revoked his: %v", err)
	}
	if r := f.role("bob"); r != "" {
		t.Fatalf("bob still holds role %q on the car", r)
	}
	// Only the owner brings him back.
	f.shareAndPair("bob", protocol.RoleValet, 1)
}

// Issue 8, case 1: an owner's revocation of a driver's or valet's last key ends their share
// unless the owner keeps it; revoking one of two keys, or one's own key, does not.
func TestRevokingLastKeyEndsShare(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	two := f.shareAndPair("bob", protocol.RoleDriver, 2)
	rv, err := f.svc.RevokeKey(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: two[0].ID, TOTP: "123456"})
	if err != nil || rv.ShareEnded || rv.User != "bob" || f.role("bob") != protocol.RoleDriver {
		t.Fatalf("first of two keys: %+v %v, role %q", rv, err, f.role("bob"))
	}
	before := f.svc.Status(vin).Version
	rv, err = f.svc.RevokeKey(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: two[1].ID, TOTP: "123456"})
	if err != nil || !rv.ShareEnded || rv.Version != before+1 || f.role("bob") != "" {
		t.Fatalf("last key: %+v %v, role %q", rv, err, f.role("bob"))
	}
	found := false
	for _, e := range f.audit(audit.KindKeys) {
		found = found || e.Outcome == "revoked" && strings.Contains(e.Detail, "share_ended=true")
	}
	if !found {
		t.Fatal("the ended share is not in the audit log")
	}

	// keep_share: the owner says carol may pair another phone.
	ck := f.shareAndPair("carol", protocol.RoleValet, 1)[0]
	rv, err = f.svc.RevokeKey(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: ck.ID, TOTP: "123456", KeepShare: true})
	if err != nil || rv.ShareEnded || f.role("carol") != protocol.RoleValet {
		t.Fatalf("keep_share: %+v %v, role %q", rv, err, f.role("carol"))
	}
	if k := f.pair("carol", 1)[0]; k.Role != protocol.RoleValet {
		t.Fatalf("carol's new key: %+v", k)
	}

	// A user revoking their own (lost) phone's key keeps the share the owner gave them.
	st, _ := f.svc.List("carol", vin)
	for _, k := range st.Keys {
		if k.RevokedAtMs == 0 {
			if _, err := f.svc.Revoke(ctx, "carol", "s3", RevokeRequest{VIN: vin, KeyID: k.ID, TOTP: "123456"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if f.role("carol") != protocol.RoleValet {
		t.Fatalf("carol lost her share by revoking her own key: %q", f.role("carol"))
	}
}

// Issue 8, case 1: the owner removes bob from the car: all his keys revoked and his role and
// share ended in one new whitelist version, with a second factor, audited.
func TestOwnerRemovesUserFromCar(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.pair("alice", 1)
	bks := f.shareAndPair("bob", protocol.RoleDriver, 2)
	f.shareAndPair("carol", protocol.RoleValet, 1)
	before := f.svc.Status(vin).Version

	req := RemoveUserRequest{VIN: vin, User: "bob"}
	if _, err := f.svc.RemoveUser(ctx, "alice", "s1", req); reasonOf(err) != protocol.ReasonTOTPRequired {
		t.Fatalf("without a code: %v", err)
	}
	req.TOTP = "123456"
	if _, err := f.svc.RemoveUser(ctx, "carol", "s3", req); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("by a valet: %v", err)
	}
	if _, err := f.svc.RemoveUser(ctx, "alice", "s1", RemoveUserRequest{VIN: vin, User: "alice", TOTP: "123456"}); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("the owner removes herself: %v", err)
	}
	rc, err := f.svc.RemoveUser(ctx, "alice", "s1", req)
	if err != nil || rc.KeysChanged != 2 || rc.Version != before+1 {
		t.Fatalf("remove bob: %+v %v", rc, err)
	}
	wl := f.lastPublished()
	if wl.Version != before+1 {
		t.Fatalf("published version %d, want %d", wl.Version, before+1)
	}
	for _, bk := range bks {
		if k, _ := wl.Find(bk.ID); k.RevokedAtMs == 0 {
			t.Fatalf("bob's key %s not revoked on the published whitelist", bk.ID)
		}
	}
	if f.role("bob") != "" || f.role("carol") != protocol.RoleValet {
		t.Fatalf("roles after: bob %q carol %q", f.role("bob"), f.role("carol"))
	}
	_, pub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "bob", "s2", vin, pub, "", "123456"); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("bob pairs after his removal: %v", err)
	}
	if _, err := f.svc.RemoveUser(ctx, "alice", "s1", req); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("removing him twice: %v", err)
	}
	found := false
	for _, e := range f.audit(audit.KindKeys) {
		found = found || e.Outcome == "user_removed" && e.User == "alice" && strings.Contains(e.Detail, "user=bob keys_revoked=2")
	}
	if !found {
		t.Fatal("no audit record of the removal")
	}
	// An owner is not removed by another owner.
	if err := f.st.Assign(vin, "carol", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.RemoveUser(ctx, "alice", "s1", RemoveUserRequest{VIN: vin, User: "carol", TOTP: "123456"}); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("an owner removes another owner: %v", err)
	}
}

// Issue 8, case 2: the admin makes the driver bob a valet: his paired key is rewritten in a new
// version, and the car (and the router, which checks the same whitelist) refuses his
// climate_on.
func TestAdminRoleChangeRewritesKeys(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	signer, pub := phoneKey(t)
	f.shareAndPair("bob", protocol.RoleDriver, 0)
	bk, err := f.svc.Pair(ctx, "bob", "s2", vin, pub, "", "123456")
	if err != nil {
		t.Fatal(err)
	}
	before := f.svc.Status(vin).Version
	rc, err := f.svc.Assign(ctx, vin, "bob", protocol.RoleValet)
	if err != nil || rc.KeysChanged != 1 || rc.Version != before+1 {
		t.Fatalf("assign valet: %+v %v", rc, err)
	}
	wl := f.lastPublished()
	if k, _ := wl.Find(bk.ID); k.Role != protocol.RoleValet || wl.Version != before+1 {
		t.Fatalf("published: version %d, bob's key %+v", wl.Version, k)
	}
	climate := signedCommand(t, signer, bk.ID, protocol.ActionClimateOn, f.clk.Now())
	if _, _, err := whitelist.VerifyCommand(wl, climate, protocol.ChannelCloud, f.clk.Now()); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("climate_on from a valet: %v", err)
	}
	if _, _, err := whitelist.VerifyCommand(wl, signedCommand(t, signer, bk.ID, protocol.ActionUnlock, f.clk.Now()), protocol.ChannelCloud, f.clk.Now()); err != nil {
		t.Fatalf("unlock from a valet: %v", err)
	}
	if f.role("bob") != protocol.RoleValet {
		t.Fatalf("role %q", f.role("bob"))
	}
	// Made owner, his key loses the share's terms; the same role again changes nothing.
	if rc, err = f.svc.Assign(ctx, vin, "bob", protocol.RoleOwner); err != nil || rc.KeysChanged != 1 || f.key(bk.ID).Role != protocol.RoleOwner {
		t.Fatalf("assign owner: %+v %v", rc, err)
	}
	v := f.svc.Status(vin).Version
	if rc, err = f.svc.Assign(ctx, vin, "bob", protocol.RoleOwner); err != nil || rc.KeysChanged != 0 || rc.Version != 0 || f.svc.Status(vin).Version != v {
		t.Fatalf("the same role again: %+v %v", rc, err)
	}
	if _, err := f.svc.Assign(ctx, vin, "nobody", protocol.RoleDriver); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("unknown user: %v", err)
	}
	if _, err := f.svc.Assign(ctx, "2HGCM82633A004352", "bob", protocol.RoleDriver); reasonOf(err) != protocol.ReasonVehicleUnknown {
		t.Fatalf("unknown car: %v", err)
	}
	if _, err := f.svc.Assign(ctx, vin, "bob", "king"); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("unknown role: %v", err)
	}
	n := 0
	for _, e := range f.audit(audit.KindAdmin) {
		if e.Outcome == "assigned" && e.User == "bob" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d assignments of bob audited, want 3", n)
	}
}

// signedCommand is a command for vin signed with a phone key.
func signedCommand(t *testing.T, k *sign.Signer, keyID string, a protocol.Action, now time.Time) protocol.Envelope {
	t.Helper()
	b, _ := json.Marshal(protocol.Command{V: protocol.Version, ID: "c-" + string(a), VIN: vin, Action: a, KeyID: keyID,
		IssuedAtMs: now.UnixMilli(), ExpiresAtMs: now.Add(30 * time.Second).UnixMilli()})
	env, err := k.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// Issue 8, case 2: `assign --role none` and unassign remove a user: keys revoked, role and
// share gone, one new version.
func TestAdminUnassignRemovesUser(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	bks := f.shareAndPair("bob", protocol.RoleDriver, 2)
	before := f.svc.Status(vin).Version
	rc, err := f.svc.Unassign(ctx, vin, "bob")
	if err != nil || rc.KeysChanged != 2 || rc.Version != before+1 {
		t.Fatalf("unassign: %+v %v", rc, err)
	}
	for _, bk := range bks {
		if f.key(bk.ID).RevokedAtMs == 0 {
			t.Fatal("bob's key not revoked")
		}
	}
	if f.role("bob") != "" {
		t.Fatalf("bob's role %q", f.role("bob"))
	}
	_, pub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "bob", "s2", vin, pub, "", "123456"); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("bob pairs after unassign: %v", err)
	}
	if _, err := f.svc.Unassign(ctx, vin, "bob"); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("unassign twice: %v", err)
	}
	// --role none is the same; a user without keys changes no version.
	f.shareAndPair("carol", protocol.RoleValet, 0)
	v := f.svc.Status(vin).Version
	if rc, err := f.svc.Assign(ctx, vin, "carol", RoleNone); err != nil || rc.Version != 0 || f.role("carol") != "" || f.svc.Status(vin).Version != v {
		t.Fatalf("assign none: %+v %v", rc, err)
	}
	n := 0
	for _, e := range f.audit(audit.KindAdmin) {
		if e.Outcome == "unassigned" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d removals audited, want 2", n)
	}
}

// Issue 8, case 2: a car given to a new owner keeps nobody else's role or key.
func TestTransferRemovesPreviousOwner(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ak := f.pair("alice", 1)[0]
	f.shareAndPair("bob", protocol.RoleDriver, 1)
	before := f.svc.Status(vin).Version
	tr, err := f.svc.Transfer(ctx, vin, "carol")
	if err != nil || tr.KeysRemoved != 2 || tr.Version != before+1 || strings.Join(tr.UsersRemoved, ",") != "alice,bob" {
		t.Fatalf("transfer: %+v %v", tr, err)
	}
	wl := f.lastPublished()
	if wl.Version != before+1 || len(wl.Keys) != 0 {
		t.Fatalf("published after the transfer: %+v", wl)
	}
	v, _ := f.st.GetVehicle(vin)
	if len(v.Users) != 1 || v.Users["carol"] != protocol.RoleOwner {
		t.Fatalf("users after the transfer: %v", v.Users)
	}
	_, pub := phoneKey(t)
	if _, err := f.svc.Pair(ctx, "alice", "s1", vin, pub, "", "123456"); reasonOf(err) != protocol.ReasonForbidden {
		t.Fatalf("the previous owner pairs: %v", err)
	}
	if _, err := f.svc.Revoke(ctx, "alice", "s1", RevokeRequest{VIN: vin, KeyID: ak.ID, TOTP: "123456"}); reasonOf(err) != protocol.ReasonKeyUnknown {
		t.Fatalf("the previous owner's key: %v", err)
	}
	if k := f.pair("carol", 1)[0]; k.Role != protocol.RoleOwner {
		t.Fatalf("the new owner's key: %+v", k)
	}
	if _, err := f.svc.Transfer(ctx, vin, "nobody"); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("transfer to an unknown user: %v", err)
	}
	found := false
	for _, e := range f.audit(audit.KindAdmin) {
		found = found || e.Outcome == "transferred" && e.User == "carol" && strings.Contains(e.Detail, "keys_removed=2")
	}
	if !found {
		t.Fatal("transfer not audited")
	}
}

// Issue 8, case 15: decommissioning revokes every key and role, publishes an empty whitelist,
// and retires the car's credentials when the car acknowledged it (or at once on request).
func TestDecommissionRevokesEverything(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var retired []string
	f.svc.CredentialsRetired = func(vin, jti string) { retired = append(retired, vin+" "+jti) }
	f.pair("alice", 1)
	f.shareAndPair("bob", protocol.RoleDriver, 1)
	before := f.svc.Status(vin).Version
	d, err := f.svc.Decommission(ctx, vin, false)
	if err != nil || d.KeysRemoved != 2 || d.Version != before+1 || d.CredentialsRetired {
		t.Fatalf("decommission: %+v %v", d, err)
	}
	if wl := f.lastPublished(); wl.Version != d.Version || len(wl.Keys) != 0 {
		t.Fatalf("published: %+v", wl)
	}
	v, _ := f.st.GetVehicle(vin)
	if len(v.Users) != 0 || v.DecommissionedMs == 0 || v.RetiredMs != 0 {
		t.Fatalf("vehicle after: %+v", v)
	}
	if _, err := f.svc.Assign(ctx, vin, "alice", protocol.RoleOwner); reasonOf(err) != protocol.ReasonBadRequest {
		t.Fatalf("assign on a decommissioned car: %v", err)
	}
	if _, err := f.svc.Decommission(ctx, vin, false); reasonOf(err) != protocol.ReasonDuplicate {
		t.Fatalf("twice: %v", err)
	}
	// An earlier version's acknowledgement retires nothing; the empty one's does.
	f.ack(before, vin)
	if len(retired) != 0 {
		t.Fatalf("retired on an older acknowledgement: %v", retired)
	}
	if f.svc.OutOfSync() != 1 {
		t.Fatal("the empty whitelist is not tracked as unacknowledged")
	}
	f.ack(d.Version, vin)
	v, _ = f.st.GetVehicle(vin)
	if len(retired) != 1 || retired[0] != vin+" "+v.TokenID || !strings.HasPrefix(v.TokenID, "retired-") || v.RetiredMs == 0 || !v.Reissued {
		t.Fatalf("after the acknowledgement: retired %v, vehicle %+v", retired, v)
	}
	if f.svc.OutOfSync() != 0 || !f.svc.Status(vin).InSync {
		t.Fatalf("status after: %+v", f.svc.Status(vin))
	}
	if _, err := f.svc.Decommission(ctx, vin, true); reasonOf(err) != protocol.ReasonDuplicate {
		t.Fatalf("after retirement: %v", err)
	}
	// A rotation leaves a retired car alone (it cannot connect to acknowledge).
	v0 := f.svc.Status(vin).Version
	fresh, _ := sign.Generate()
	f.ring.cur, f.ring.prev = fresh, f.ring.cur
	if err := f.svc.Rotate(ctx); err != nil || f.svc.Status(vin).Version != v0 {
		t.Fatalf("rotation re-signed a retired car's whitelist: %v", err)
	}
	evs := f.audit(audit.KindAdmin)
	found := false
	for _, e := range evs {
		found = found || e.Outcome == "decommissioned" && strings.Contains(e.Detail, "keys_removed=2")
	}
	if !found {
		t.Fatalf("decommission not audited: %+v", evs)
	}
}

func TestDecommissionRetiresAtOnceOnRequest(t *testing.T) {
	f := newFixture(t)
	var retired []string
	f.svc.CredentialsRetired = func(vin, jti string) { retired = append(retired, jti) }
	d, err := f.svc.Decommission(context.Background(), vin, true)
	if err != nil || !d.CredentialsRetired || len(retired) != 1 {
		t.Fatalf("decommission now: %+v %v %v", d, err, retired)
	}
	if v, _ := f.st.GetVehicle(vin); v.TokenID != retired[0] || v.RetiredMs == 0 {
		t.Fatalf("vehicle: %+v", v)
	}
	if f.svc.OutOfSync() != 0 {
		t.Fatal("a retired car counts as unacknowledged")
	}
}

// Issue 8, case 15: the admin revokes a key: no second factor, audited as an admin action,
// and the last key of a driver ends the share as an owner's revocation does.
func TestAdminRevokesKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ak := f.pair("alice", 1)[0]
	bk := f.shareAndPair("bob", protocol.RoleDriver, 1)[0]
	rv, err := f.svc.AdminRevoke(ctx, vin, bk.ID, false)
	if err != nil || !rv.ShareEnded || rv.User != "bob" || f.key(bk.ID).RevokedAtMs == 0 || f.role("bob") != "" {
		t.Fatalf("admin revoke: %+v %v", rv, err)
	}
	if _, err := f.svc.AdminRevoke(ctx, vin, bk.ID, false); reasonOf(err) != protocol.ReasonKeyRevoked {
		t.Fatalf("twice: %v", err)
	}
	if _, err := f.svc.AdminRevoke(ctx, vin, "nope", false); reasonOf(err) != protocol.ReasonKeyUnknown {
		t.Fatalf("unknown key: %v", err)
	}
	// The admin may take the last owner key (a stolen phone); the owner keeps the role.
	if _, err := f.svc.AdminRevoke(ctx, vin, ak.ID, false); err != nil || f.role("alice") != protocol.RoleOwner {
		t.Fatalf("admin revokes the last owner key: %v, role %q", err, f.role("alice"))
	}
	ck := f.shareAndPair("carol", protocol.RoleValet, 1)[0]
	if rv, err := f.svc.AdminRevoke(ctx, vin, ck.ID, true); err != nil || rv.ShareEnded || f.role("carol") != protocol.RoleValet {
		t.Fatalf("keep share: %+v %v", rv, err)
	}
	n := 0
	for _, e := range f.audit(audit.KindAdmin) {
		if e.Outcome == "key_revoked" {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d admin revocations audited, want 3", n)
	}
}

// A user disabled or deleted (the user side of issue 8, case 15) leaves every car at once.
func TestUnassignEverywhere(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const vin2 = "1HGCM82633A000777"
	if err := f.st.AddVehicles([]store.Vehicle{{VIN: vin2}}); err != nil {
		t.Fatal(err)
	}
	if err := f.st.Assign(vin2, "bob", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	bk := f.shareAndPair("bob", protocol.RoleDriver, 1)[0]
	rcs, err := f.svc.UnassignEverywhere(ctx, "bob")
	if err != nil || len(rcs) != 2 || rcs[0].VIN != vin2 && rcs[1].VIN != vin2 {
		t.Fatalf("unassign everywhere: %+v %v", rcs, err)
	}
	if f.role("bob") != "" || f.key(bk.ID).RevokedAtMs == 0 {
		t.Fatal("bob kept his role or key")
	}
	if v, _ := f.st.GetVehicle(vin2); len(v.Users) != 0 {
		t.Fatalf("bob still on %s: %v", vin2, v.Users)
	}
	if rcs, err := f.svc.UnassignEverywhere(ctx, "bob"); err != nil || len(rcs) != 0 {
		t.Fatalf("again: %+v %v", rcs, err)
	}
}

// A pairing racing the user's removal never leaves the removed user a key: both pass their
// early checks, then the car's lock orders them, and the pairing checks the role again.
func TestPairRacingRemovalLeavesNoKey(t *testing.T) {
	for range 10 {
		f := newFixture(t)
		ctx := context.Background()
		f.shareAndPair("bob", protocol.RoleDriver, 1)
		var ready sync.WaitGroup
		ready.Add(2)
		f.svc.tfa = barrierFactor{&ready}
		errs := make(chan error, 2)
		go func() {
			_, pub := phoneKey(t)
			_, err := f.svc.Pair(ctx, "bob", "s2", vin, pub, "", "123456")
			if err != nil && reasonOf(err) != protocol.ReasonForbidden {
				errs <- err
				return
			}
			errs <- nil
		}()
		go func() {
			_, err := f.svc.RemoveUser(ctx, "alice", "s1", RemoveUserRequest{VIN: vin, User: "bob", TOTP: "123456"})
			errs <- err
		}()
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for _, k := range f.svc.Whitelist(vin).Keys {
			if k.User == "bob" && k.RevokedAtMs == 0 {
				t.Fatalf("bob kept key %s after his removal", k.ID)
			}
		}
		if f.role("bob") != "" {
			t.Fatalf("bob kept role %q", f.role("bob"))
		}
	}
}
