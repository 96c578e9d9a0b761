package admin_test

import (
	"context"
	"encoding/csv"
	"slices"
	"strings"
	"testing"
	"time"

	"telematics/pkg/api"
)

// audit: filters by user, car (VINs upper-cased), kind and time, as a table, JSON lines that
// are package api's AuditEvent, or CSV.
func TestAuditCommand(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	g.addUser("alice")
	g.ok("", "vehicle", "add", vinA)
	g.ok("", "vehicle", "assign", vinA, "alice", "--role", "owner")
	if _, err := api.NewClient(g.cloud.HTTPURL(), "").Login(context.Background(), "alice", "wrong password!", ""); err == nil {
		t.Fatal("a wrong password logged in")
	}

	jsonLines := func(args ...string) []api.AuditEvent {
		t.Helper()
		out := g.ok("", append([]string{"audit", "--json"}, args...)...)
		var evs []api.AuditEvent
		for _, l := range lines(out) {
			var e api.AuditEvent
			decode(t, l, &e)
			evs = append(evs, e)
		}
		return evs
	}
	outcomes := func(evs []api.AuditEvent) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.Kind+":"+e.Outcome)
		}
		return out
	}
	if got, want := outcomes(jsonLines("--user", "alice")), []string{"login:refused", "admin:assigned", "admin:user_added"}; !slices.Equal(got, want) {
		t.Errorf("--user alice: %q, want %q", got, want)
	}
	if got, want := outcomes(jsonLines("--vin", strings.ToLower(vinA))), []string{"admin:assigned"}; !slices.Equal(got, want) {
		t.Errorf("--vin: %q, want %q", got, want)
	}
	if got := jsonLines("--kind", "login"); len(got) != 1 || got[0].User != "alice" || got[0].Reason != "unauthenticated" || got[0].ClientID != "127.0.0.1" {
		t.Errorf("--kind login: %+v", got)
	}
	all := jsonLines()
	if len(all) != 4 {
		t.Fatalf("all records: %+v", all)
	}
	now := time.Now()
	window := []string{"--since", now.Add(-time.Hour).UTC().Format(time.RFC3339), "--until", now.Add(time.Hour).UTC().Format(time.RFC3339)}
	if got := jsonLines(window...); len(got) != len(all) {
		t.Errorf("within the hour around now: %d records, want %d", len(got), len(all))
	}
	if got := jsonLines("--since", "1h"); len(got) != len(all) {
		t.Errorf("--since 1h: %d records, want %d", len(got), len(all))
	}
	if got := jsonLines("--until", time.UnixMilli(all[0].TsMs).UTC().Format(time.RFC3339Nano)); len(got) >= len(all) {
		t.Errorf("--until the newest record's time excludes it: %d records", len(got))
	}

	// CSV: a header and a row per record, times in RFC 3339 UTC
	rows, err := csv.NewReader(strings.NewReader(g.ok("", "audit", "--user", "alice", "--csv"))).ReadAll()
	if err != nil || len(rows) != 4 {
		t.Fatalf("--csv: %v %q", err, rows)
	}
	if want := []string{"seq", "time", "kind", "user", "client_id", "vin", "cmd_id", "action", "outcome", "reason", "detail",
		"received", "sent", "car_time"}; !slices.Equal(rows[0], want) {
		t.Fatalf("CSV header %q", rows[0])
	}
	if ts, err := time.Parse(time.RFC3339, rows[1][1]); err != nil || !strings.HasSuffix(rows[1][1], "Z") || rows[1][2] != "login" || rows[1][3] != "alice" || ts.IsZero() {
		t.Fatalf("CSV row %q: %v", rows[1], err)
	}

	// the table, and what stderr says about it
	r := g.run("", "audit", "--user", "alice", "--limit", "2")
	ls := lines(r.stdout)
	if r.code != 0 || len(ls) != 3 || !slices.Equal(fields(ls[0]), []string{"TIME", "KIND", "USER", "VIN", "ACTION", "OUTCOME", "REASON", "DETAIL"}) ||
		r.stderr != "the newest 2 records; --limit N for more\n" {
		t.Fatalf("audit table: %+v", r)
	}
	if row := fields(ls[1]); row[1] != "login" || row[2] != "alice" || row[3] != "-" || row[5] != "refused" || row[6] != "unauthenticated" {
		t.Fatalf("audit row %q", row)
	}
	r = g.run("", "audit", "--since", now.Add(time.Hour).UTC().Format(time.RFC3339))
	if r.code != 0 || r.stdout != "" || r.stderr != "no audit records match\n" {
		t.Fatalf("no match: %+v", r)
	}
	if out := g.ok("", "audit", "--user", "nobody", "--json"); out != "" {
		t.Fatalf("no match --json: %q", out)
	}
}
