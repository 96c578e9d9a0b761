package httpapi

import (
	"context"
	"slices"
	"strings"
	"testing"

	"telematics/gateway/audit"
	"telematics/pkg/api"
	"telematics/pkg/protocol"
)

// GET /v1/admin/audit filters by car, user, kind and time (since included, until not) and
// answers the newest limit records, newest first.
func TestAuditQueryFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	ctx := context.Background()
	for i, e := range []audit.Event{
		{TsMs: 1000, Kind: audit.KindLogin, User: "alice", Outcome: "ok"},
		{TsMs: 2000, Kind: audit.KindCommand, User: "alice", VIN: vinA, Action: "unlock", Outcome: "accepted"},
		{TsMs: 3000, Kind: audit.KindCommand, User: "bob", VIN: vinB, Action: "honk", Outcome: "accepted"},
		{TsMs: 4000, Kind: audit.KindAdmin, User: "bob", Outcome: "user_disabled"},
		{TsMs: 5000, Kind: audit.KindResult, VIN: vinA, Outcome: "executed"},
	} {
		e.Detail = string(rune('a' + i)) // a…e, to name them
		if err := f.api.Audit.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		q    api.AuditQuery
		want string
	}{
		{"all", api.AuditQuery{}, "edcba"},
		{"car", api.AuditQuery{VIN: vinA}, "eb"},
		{"user", api.AuditQuery{User: "bob"}, "dc"},
		{"kind", api.AuditQuery{Kind: audit.KindCommand}, "cb"},
		{"user and kind", api.AuditQuery{User: "alice", Kind: audit.KindCommand}, "b"},
		{"limit", api.AuditQuery{Limit: 2}, "ed"},
		{"since, included", api.AuditQuery{SinceMs: 3000}, "edc"},
		{"until, excluded", api.AuditQuery{UntilMs: 3000}, "ba"},
		{"since and until", api.AuditQuery{SinceMs: 2000, UntilMs: 4001}, "dcb"},
		{"time and car", api.AuditQuery{SinceMs: 2001, VIN: vinA}, "e"},
		{"nothing", api.AuditQuery{User: "carol"}, ""},
	} {
		evs, err := f.admin.Audit(ctx, tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := ""
		for _, e := range evs {
			got += e.Detail
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	// No match is null, as the log's own answer (scripts that test for null keep working).
	r := f.do("GET", "/v1/admin/audit?user=carol", "Bearer "+adminToken, nil)
	if r.status != 200 || strings.TrimSpace(string(r.body)) != "null" {
		t.Fatalf("no match: %d %s", r.status, r.body)
	}
	// Every kind the admin CLI offers is one the gateway takes.
	for _, k := range api.AuditKinds {
		if !slices.Contains(audit.Kinds, k) {
			t.Errorf("api.AuditKinds has %q, the audit log does not", k)
		}
		if _, err := f.admin.Audit(ctx, api.AuditQuery{Kind: k}); err != nil {
			t.Errorf("kind %s: %v", k, err)
		}
	}
}

// A malformed query is bad_request, saying which parameter and what it wants.
func TestAuditQueryRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	for _, tc := range []struct{ query, message string }{
		{"kind=logins", `kind "logins": want one of command,`},
		{"limit=ten", `limit "ten": want a number, 0 or more`},
		{"limit=-1", `limit "-1"`},
		{"since=yesterday", `since "yesterday": want Unix milliseconds`},
		{"until=-5", `until "-5": want Unix milliseconds`},
	} {
		r := f.do("GET", "/v1/admin/audit?"+tc.query, "Bearer "+adminToken, nil)
		e := errorBody(t, r)
		if r.status != 400 || e.Error != protocol.ReasonBadRequest || !strings.Contains(e.Message, tc.message) {
			t.Errorf("%s: %d %+v, want %q", tc.query, r.status, e, tc.message)
		}
	}
}
