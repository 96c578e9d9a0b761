package console

import (
	"encoding/json"
	"fmt"
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

// Every state of a request is assembled from its decision record and its result record: the
// arrival, the decision, the send, the car's result by its clock and the result's arrival;
// the latency runs from the arrival to the result's arrival.
func TestCommandTimelineStatesAndTimes(t *testing.T) {
	const t0 = int64(1_800_000_000_000)
	evs := []audit.Event{ // newest first, as audit.Query returns them
		{TsMs: t0 + 9000, Kind: audit.KindResult, VIN: vin1, CmdID: "c-silent", Outcome: protocol.ReplyExpired,
			Reason: string(protocol.ReasonExpired), SentMs: t0 + 2006},
		{TsMs: t0 + 2005, Kind: audit.KindCommand, User: "alice", VIN: vin1, CmdID: "c-silent", Action: "honk",
			Outcome: protocol.ReplyAccepted, Detail: "factors=token,key", ReceivedMs: t0 + 2001},
		{TsMs: t0 + 1500, Kind: audit.KindResult, VIN: vin1, CmdID: "c-trunk", Outcome: protocol.ReplyRejected,
			Reason: string(protocol.ReasonForbidden), Detail: "car: moving", SentMs: t0 + 1406, CarMs: t0 + 1450},
		{TsMs: t0 + 1405, Kind: audit.KindCommand, User: "alice", VIN: vin1, CmdID: "c-trunk", Action: "trunk",
			Outcome: protocol.ReplyAccepted, Detail: "factors=token,key", ReceivedMs: t0 + 1400},
		{TsMs: t0 + 1003, Kind: audit.KindCommand, User: "bob", VIN: vin1, CmdID: "c-bob", Action: "unlock",
			Outcome: protocol.ReplyRejected, Reason: string(protocol.ReasonKeyRevoked), ReceivedMs: t0 + 1000},
		{TsMs: t0 + 90, Kind: audit.KindResult, VIN: vin1, CmdID: "c-unlock", Outcome: protocol.ReplyExecuted,
			SentMs: t0 + 12, CarMs: t0 + 60},
		{TsMs: t0 + 10, Kind: audit.KindCommand, User: "alice", VIN: vin1, CmdID: "c-unlock", Action: "unlock",
			Outcome: protocol.ReplyAccepted, Detail: "factors=token,key,totp", ReceivedMs: t0 + 4},
	}
	tl := buildTimeline(evs)
	steps := func(c Command) string {
		var s []string
		for _, st := range c.States {
			s = append(s, fmt.Sprintf("%s:%s@%d%s", st.Step, st.State, st.AtMs-t0, map[bool]string{true: "(" + st.Reason + ")"}[st.Reason != ""]))
		}
		return strings.Join(s, " ")
	}
	want := []struct {
		id, steps         string
		latency, decision int64
	}{
		{"c-silent", "received:received@2001 decided:accepted@2005 sent:sent@2006 result:expired@9000(expired)", 6999, 4},
		{"c-trunk", "received:received@1400 decided:accepted@1405 sent:sent@1406 car:rejected@1450(forbidden) result:rejected@1500(forbidden)", 100, 5},
		{"c-bob", "received:received@1000 decided:rejected@1003(key_revoked)", 0, 3},
		{"c-unlock", "received:received@4 decided:accepted@10 sent:sent@12 car:executed@60 result:executed@90", 86, 6},
	}
	if len(tl) != len(want) {
		t.Fatalf("%d commands, want %d: %+v", len(tl), len(want), tl)
	}
	for i, w := range want {
		c := tl[i]
		if c.ID != w.id || steps(c) != w.steps || c.LatencyMs != w.latency || c.DecisionMs != w.decision {
			t.Errorf("command %d: %s %q latency %d decision %d; want %s %q %d %d", i, c.ID, steps(c), c.LatencyMs, c.DecisionMs,
				w.id, w.steps, w.latency, w.decision)
		}
	}
	if got := strings.Join(tl[3].Factors, ","); got != "token,key,totp" {
		t.Errorf("factors %q", got)
	}
}
