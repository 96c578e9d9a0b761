package console

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"telematics/gateway/audit"
	"telematics/pkg/protocol"
)

func TestCommandTimelineFromTheAuditLog(t *testing.T) {
	f := newFixture(t)
	b, _ := f.enrolled("victor")
	s := b.events("")
	if ev := s.next(t); ev.event != "fleet" {
		t.Fatalf("first event: %+v", ev)
	}
	t0 := f.clock.Now().UnixMilli()
	recs := []audit.Event{
		{TsMs: t0, Kind: audit.KindCommand, User: "alice", ClientID: "app-1", VIN: vin1, CmdID: "c1", Action: "unlock",
			Outcome: protocol.ReplyAccepted, Detail: "factors=token,key,totp"},
		{TsMs: t0 + 100, Kind: audit.KindCommand, User: "bob", VIN: vin1, CmdID: "c2", Action: "unlock",
			Outcome: protocol.ReplyRejected, Reason: string(protocol.ReasonKeyRevoked)},
		{TsMs: t0 + 180, Kind: audit.KindResult, User: "alice", VIN: vin1, CmdID: "c1", Action: "unlock", Outcome: protocol.ReplyExecuted},
		{TsMs: t0 + 500, Kind: audit.KindVehicle, User: "alice", VIN: vin1, CmdID: "c3", Action: "lock", Outcome: protocol.ReplyExecuted,
			Detail: "command key=k1 seq=1"},
		{TsMs: t0 + 600, Kind: audit.KindCommand, User: "carol", VIN: vin2, CmdID: "c4", Action: "lock", Outcome: protocol.ReplyAccepted},
	}
	if err := f.log.Append(recs...); err != nil {
		t.Fatal(err)
	}
	r := b.do("GET", "/console/api/cars/"+vin1+"/commands", nil)
	var tl Timeline
	if err := json.Unmarshal(r.body, &tl); r.status != http.StatusOK || err != nil || len(tl.Commands) != 3 {
		t.Fatalf("timeline: %d %s", r.status, r.body)
	}
	local, refused, done := tl.Commands[0], tl.Commands[1], tl.Commands[2]
	if local.ID != "c3" || local.Path != "local" || strings.Join(local.Factors, ",") != "key" || local.States[0].State != "executed" {
		t.Errorf("local command: %+v", local)
	}
	if refused.ID != "c2" || refused.User != "bob" || len(refused.States) != 1 || refused.States[0].Reason != "key_revoked" || refused.LatencyMs != 0 {
		t.Errorf("refused command: %+v", refused)
	}
	if done.ID != "c1" || done.Path != "cloud" || strings.Join(done.Factors, ",") != "token,key,totp" || len(done.States) != 2 ||
		done.States[0].State != "accepted" || done.States[1].State != "executed" || done.States[1].AtMs != t0+180 || done.LatencyMs != 180 {
		t.Errorf("executed command: %+v", done)
	}
	// Live: the stream names the cars with new timeline records.
	got := map[string]bool{}
	for len(got) < 2 {
		ev := s.next(t)
		var items []map[string]any
		_ = json.Unmarshal([]byte(ev.data), &items)
		for _, it := range items {
			if it["commands"] == true {
				got[it["vin"].(string)] = true
			}
		}
	}
	if !got[vin1] || !got[vin2] {
		t.Errorf("timeline changes: %v", got)
	}
	if r := b.do("GET", "/console/api/cars/nope/commands", nil); r.status != http.StatusBadRequest {
		t.Errorf("malformed VIN: %d", r.status)
	}
	if r := f.browser().do("GET", "/console/api/cars/"+vin1+"/commands", nil); r.status != http.StatusUnauthorized {
		t.Errorf("without a session: %d", r.status)
	}
}
