package console

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// GET /console/api/fleet answers a bounded page: the cars matching the search and the filter
// in VIN order after a cursor, how many match, and the next cursor; a client walks every car
// page by page. Bad parameters are refused.
func TestFleetPagesAndFilters(t *testing.T) {
	f := newFixture(t)
	var vs []store.Vehicle
	for i := range 7 {
		vin := fmt.Sprintf("PAGE%013d", i)
		vs = append(vs, store.Vehicle{VIN: vin})
		status := protocol.StatusOffline
		if i%2 == 0 {
			status = protocol.StatusOnline
		}
		f.twins.set(store.Twin{VIN: vin, Status: status, Signals: map[string]any{protocol.VSSIsLocked: i != 3}})
	}
	if err := f.st.AddVehicles(vs); err != nil {
		t.Fatal(err)
	}
	b, _ := f.enrolled("victor")
	eventually(t, func() bool {
		cars, _ := f.c.watch.snapshot()
		return len(cars) == 7 && cars[0].Online
	})
	get := func(query string) (FleetPage, reply) {
		t.Helper()
		r := b.do("GET", "/console/api/fleet"+query, nil)
		var p FleetPage
		if r.status == http.StatusOK {
			if err := json.Unmarshal(r.body, &p); err != nil {
				t.Fatal(err)
			}
		}
		return p, r
	}

	// Every car, three at a time.
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 3 {
			t.Fatalf("more pages than cars: %v", got)
		}
		p, r := get("?limit=3&after=" + after)
		if r.status != http.StatusOK || p.Total != 7 || p.Fleet != 7 || len(p.Cars) > 3 || p.EventID == "" {
			t.Fatalf("page after %q: %d %s", after, r.status, r.body)
		}
		for _, c := range p.Cars {
			got = append(got, c.VIN)
		}
		if p.Next == "" {
			break
		}
		after = p.Next
	}
	if len(got) != 7 || got[0] != vs[0].VIN || got[6] != vs[6].VIN {
		t.Errorf("walked %v, want the 7 cars in VIN order", got)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Errorf("not in VIN order: %v", got)
		}
	}

	for _, tc := range []struct {
		name, query string
		total       int
		first       string
	}{
		{"online", "?filter=online", 4, vs[0].VIN},
		{"offline", "?filter=offline", 3, vs[1].VIN},
		{"unlocked", "?filter=unlocked", 1, vs[3].VIN},
		{"waiting for a whitelist", "?filter=waiting", 0, ""},
		{"search, any case", "?q=page0000000000005", 1, vs[5].VIN},
		{"search and filter", "?q=PAGE&filter=offline&limit=1", 3, vs[1].VIN},
	} {
		p, r := get(tc.query)
		if r.status != http.StatusOK || p.Total != tc.total || (tc.first != "" && (len(p.Cars) == 0 || p.Cars[0].VIN != tc.first)) {
			t.Errorf("%s: %d %s, want %d matching, first %s", tc.name, r.status, r.body, tc.total, tc.first)
		}
	}
	if p, _ := get("?limit=1&filter=offline"); p.Next != vs[1].VIN || len(p.Cars) != 1 {
		t.Errorf("first page of one: %+v", p)
	}

	for _, q := range []string{"?limit=0", "?limit=2001", "?limit=x", "?filter=parked", "?q=%3Cscript%3E", "?after=AAAAAAAAAAAAAAAAAA"} {
		if _, r := get(q); r.status != http.StatusBadRequest || r.reason() != string(protocol.ReasonBadRequest) {
			t.Errorf("%s: %d %s, want 400 bad_request", q, r.status, r.body)
		}
	}
}

// The stream's first event, the whole fleet, comes in parts of at most fleetChunk cars; only
// the last carries the id the stream resumes from.
func TestFleetEventInParts(t *testing.T) {
	f := newFixture(t)
	n := fleetChunk + 17
	vs := make([]store.Vehicle, n)
	for i := range vs {
		vs[i] = store.Vehicle{VIN: fmt.Sprintf("PART%013d", i)}
	}
	if err := f.st.AddVehicles(vs); err != nil {
		t.Fatal(err)
	}
	b, _ := f.enrolled("victor")
	eventually(t, func() bool {
		cars, _ := f.c.watch.snapshot()
		return len(cars) == n
	})
	s := b.events("")
	var parts []Fleet
	var ids []string
	for len(parts) == 0 || parts[len(parts)-1].More {
		ev := s.next(t)
		var fl Fleet
		if err := json.Unmarshal([]byte(ev.data), &fl); ev.event != "fleet" || err != nil {
			t.Fatalf("event %d: %s %.100s", len(parts), ev.event, ev.data)
		}
		parts, ids = append(parts, fl), append(ids, ev.id)
	}
	if len(parts) != 2 || len(parts[0].Cars) != fleetChunk || len(parts[1].Cars) != 17 || ids[0] != "" || ids[1] == "" ||
		parts[1].EventID != ids[1] || parts[0].Cars[0].VIN != vs[0].VIN || parts[1].Cars[16].VIN != vs[n-1].VIN {
		t.Fatalf("parts: %d, cars %d+%d, ids %q", len(parts), len(parts[0].Cars), len(parts[len(parts)-1].Cars), ids)
	}
}
