package httpapi

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"

	"telematics/gateway/audit"
	"telematics/gateway/keys"
	"telematics/gateway/store"
	"telematics/pkg/api"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// twinOf is a twin with every field set.
func twinOf(vin string) store.Twin {
	return store.Twin{VIN: vin, Status: "online", StatusMs: 1_800_000_000_001, TelemetryMs: 1_800_000_000_002,
		TelemetrySeq: 42, Signals: map[string]any{"soc": 81.5, "locked": true}}
}

// allSet fails the test if a field of v (a struct) is its zero value: the conversion under
// test was given a value with every field set, so a zero field was not carried over.
func allSet(t *testing.T, name string, v any) {
	t.Helper()
	rv := reflect.ValueOf(v)
	for i := range rv.NumField() {
		if rv.Field(i).IsZero() {
			t.Errorf("%s.%s is not set: the conversion dropped it", name, rv.Type().Field(i).Name)
		}
	}
}

// The key registry's answers reach the wire field by field.
func TestKeyRegistryViews(t *testing.T) {
	t.Parallel()
	wk := []protocol.WhitelistKey{{ID: "k1", User: "alice", Role: protocol.RoleOwner}}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"KeyStatus", keyStatusView(keys.Status{VIN: vinA, Version: 3, AckedVersion: 2, AckedMs: 1234, InSync: true, Keys: wk}),
			api.KeyStatus{VIN: vinA, Version: 3, AckedVersion: 2, AckedMs: 1234, InSync: true, Keys: wk}},
		{"Share", shareView(keys.Share{VIN: vinA, User: "bob", Role: protocol.RoleValet, NotAfterMs: 99, Channels: []string{"local"}, By: "alice", CreatedMs: 7}),
			api.Share{VIN: vinA, User: "bob", Role: protocol.RoleValet, NotAfterMs: 99, Channels: []string{"local"}, By: "alice", CreatedMs: 7}},
		{"Revocation", revocationView(keys.Revocation{VIN: vinA, KeyID: "k1", User: "bob", Version: 4, ShareEnded: true}),
			api.Revocation{VIN: vinA, KeyID: "k1", User: "bob", Version: 4, ShareEnded: true}},
		{"RoleChange", roleChangeView(keys.RoleChange{VIN: vinA, User: "bob", Role: protocol.RoleDriver, KeysChanged: 2, Version: 5}),
			api.RoleChange{VIN: vinA, User: "bob", Role: protocol.RoleDriver, KeysChanged: 2, Version: 5}},
		{"Transfer", transferView(keys.Transfer{VIN: vinA, Owner: "carol", UsersRemoved: []string{"alice", "bob"}, KeysRemoved: 3, Version: 6}),
			api.Transfer{VIN: vinA, Owner: "carol", UsersRemoved: []string{"alice", "bob"}, KeysRemoved: 3, Version: 6}},
		{"Decommission", decommissionView(keys.Decommission{VIN: vinA, UsersRemoved: []string{"carol"}, KeysRemoved: 1, Version: 7, CredentialsRetired: true}),
			api.Decommission{VIN: vinA, UsersRemoved: []string{"carol"}, KeysRemoved: 1, Version: 7, CredentialsRetired: true}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, tc.got, tc.want)
		}
		allSet(t, tc.name, tc.got)
	}
}

// The admin's view of a car carries every field of the stored car, of the live twin, and of
// the whitelist the registry holds (here acknowledged by the car).
func TestVehicleView(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	f.addVehicles(vinA)
	f.addUser("alice")
	if _, err := f.admin.Assign(ctx, vinA, "alice", protocol.RoleOwner); err != nil {
		t.Fatal(err)
	}
	k := f.pair(f.login("alice"), vinA)
	ack, _ := json.Marshal(protocol.KeysAck{V: 1, VIN: vinA, Version: 1})
	f.api.Keys.OnAck(mqttc.Message{Topic: "v/" + vinA + "/keys/ack", Payload: ack})
	f.twins.set(twinOf(vinA))

	stored := store.Vehicle{VIN: vinA, CreatedMs: 11, Users: map[string]protocol.Role{"alice": protocol.RoleOwner}, TokenID: "jti-1",
		CertSerial: "ab12", Reissued: true, DecommissionedMs: 12, RetiredMs: 13}
	got := f.api.view(stored)
	tw := twinOf(vinA)
	want := api.VehicleView{VIN: vinA, CreatedMs: 11, Users: stored.Users, TokenID: "jti-1", CertSerial: "ab12", Reissued: true,
		DecommissionedMs: 12, RetiredMs: 13,
		Twin: &api.Twin{VIN: vinA, Status: tw.Status, StatusMs: tw.StatusMs, TelemetryMs: tw.TelemetryMs,
			TelemetrySeq: tw.TelemetrySeq, Signals: tw.Signals},
		Keys: &api.KeyStatus{VIN: vinA, Version: 1, AckedVersion: 1, AckedMs: f.clock.Now().UnixMilli(), InSync: true,
			Keys: []protocol.WhitelistKey{k}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("view:\n got %+v\nwant %+v", got, want)
	}
	allSet(t, "VehicleView", got)
	allSet(t, "Twin", *got.Twin)
	allSet(t, "KeyStatus", *got.Keys)
}

// Every field of an audit record reaches GET /v1/admin/audit.
func TestAuditEventView(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	e := audit.Event{TsMs: 1_800_000_000_123, Kind: audit.KindCommand, User: "alice", ClientID: "alice-phone", VIN: vinA,
		CmdID: "c1", Action: "unlock", Outcome: "refused", Reason: "forbidden", Detail: "role=valet",
		ReceivedMs: 1_800_000_000_100, SentMs: 1_800_000_000_130, CarMs: 1_800_000_000_150}
	if err := f.api.Audit.Append(e); err != nil {
		t.Fatal(err)
	}
	evs, err := f.admin.Audit(context.Background(), api.AuditQuery{})
	if err != nil || len(evs) != 1 {
		t.Fatalf("audit: %+v %v", evs, err)
	}
	want := api.AuditEvent{Seq: evs[0].Seq, TsMs: e.TsMs, Kind: e.Kind, User: e.User, ClientID: e.ClientID, VIN: e.VIN,
		CmdID: e.CmdID, Action: e.Action, Outcome: e.Outcome, Reason: e.Reason, Detail: e.Detail,
		ReceivedMs: e.ReceivedMs, SentMs: e.SentMs, CarMs: e.CarMs}
	if evs[0] != want {
		t.Fatalf("audit record:\n got %+v\nwant %+v", evs[0], want)
	}
	allSet(t, "AuditEvent", evs[0])
}
