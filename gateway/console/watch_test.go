package console

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/protocol"
)

// watchCounts are the watcher's counters: looks at the cars, cars encoded, run's ticks.
func (f *fixture) watchCounts() (looks, encodes, ticks int) {
	w := f.c.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.looks, w.encodes, w.ticks
}

// waitTicks waits until run has ticked n more times (each an interval apart: the last look is
// then older than the freshness bound).
func (f *fixture) waitTicks(n int) {
	f.t.Helper()
	_, _, from := f.watchCounts()
	eventually(f.t, func() bool { _, _, ticks := f.watchCounts(); return ticks >= from+n })
}

// With no event stream open the watcher does not look at (summarize and encode) the fleet at
// each interval; a REST fleet call answers the cars as they are, and a car that did not change
// is not encoded again; a stream opened later gets every car as it is and the alerts of what
// happened while nobody watched; a stream resuming from its id after a pause gets the changes
// it missed.
func TestWatcherRestsWithoutStreams(t *testing.T) {
	f := newFixture(t)
	if err := f.st.AddVehicles([]store.Vehicle{{VIN: vin1}, {VIN: vin2}}); err != nil {
		t.Fatal(err)
	}
	b, _ := f.enrolled("victor")

	// Nobody watches: the ticks go on, the looks do not.
	looks0, enc0, _ := f.watchCounts()
	f.waitTicks(20)
	if looks, enc, _ := f.watchCounts(); looks != looks0 || enc != enc0 {
		t.Fatalf("no stream open: %d looks and %d cars encoded over 20 intervals, want none", looks-looks0, enc-enc0)
	}

	// A REST call gets the cars as they are now, at once (no waiting for a look).
	f.twins.set(store.Twin{VIN: vin1, Status: protocol.StatusOnline, Signals: map[string]any{protocol.VSSIsLocked: false}})
	f.waitTicks(3)
	page := func() FleetPage {
		t.Helper()
		r := b.do("GET", "/console/api/fleet", nil)
		var p FleetPage
		if err := json.Unmarshal(r.body, &p); r.status != http.StatusOK || err != nil {
			t.Fatalf("fleet: %d %s", r.status, r.body)
		}
		return p
	}
	p := page()
	if p.Fleet != 2 || len(p.Cars) != 2 || p.Cars[0].VIN != vin1 || !p.Cars[0].Online || p.Cars[0].Locked == nil || *p.Cars[0].Locked {
		t.Fatalf("fleet with no stream open: %+v", p)
	}
	// Another call after the freshness bound looks again, and encodes no car: none changed.
	looks1, enc1, _ := f.watchCounts()
	f.waitTicks(3)
	page()
	if looks, enc, _ := f.watchCounts(); looks != looks1+1 || enc != enc1 {
		t.Errorf("a second call: %d looks, %d cars encoded; want 1 look, no car encoded", looks-looks1, enc-enc1)
	}

	// A stream resumes from here later.
	s := b.events("")
	first := s.next(t)
	if first.event != "fleet" {
		t.Fatalf("first event: %+v", first)
	}
	s.res.Body.Close()
	eventually(t, func() bool {
		f.c.watch.mu.Lock()
		defer f.c.watch.mu.Unlock()
		return f.c.watch.streams == 0
	})

	// While nobody watches: a car changes, users are locked out, 2FA failures burst.
	f.twins.set(store.Twin{VIN: vin2, Status: protocol.StatusOnline, Signals: map[string]any{protocol.VSSSoC: 42.0}})
	for _, u := range []string{"ursula", "walter", "xavier"} {
		for i := 0; i < 20; i++ {
			if err := f.tfa.RecordFailure(u, "test", twofa.FactorTOTP); protocol.ReasonOf(err) == protocol.ReasonLockedOut {
				break
			}
		}
	}
	looks2, _, _ := f.watchCounts()
	f.waitTicks(10)
	if looks, _, _ := f.watchCounts(); looks != looks2 {
		t.Errorf("no stream open: %d looks", looks-looks2)
	}

	// A stream opened now: the whole fleet as it is, then the alerts.
	s = b.events("")
	ev := s.next(t)
	var fl Fleet
	if err := json.Unmarshal([]byte(ev.data), &fl); ev.event != "fleet" || err != nil || len(fl.Cars) != 2 {
		t.Fatalf("first event of a new stream: %+v", ev)
	}
	if c := fl.Cars[1]; c.VIN != vin2 || !c.Online || c.BatteryPct == nil || *c.BatteryPct != 42 || !fl.Cars[0].Online {
		t.Errorf("fleet of a new stream: %+v", fl.Cars)
	}
	ev = s.next(t)
	var as []Alert
	if err := json.Unmarshal([]byte(ev.data), &as); ev.event != "alerts" || err != nil {
		t.Fatalf("second event of a new stream: %+v", ev)
	}
	have := map[string]bool{}
	for _, a := range as {
		have[a.Kind+" "+a.Subject] = true
	}
	for _, want := range []string{"lockout ursula", "lockout walter", "lockout xavier", "totp_failures "} {
		if !have[want] {
			t.Errorf("alerts of a new stream: %v, want %q", as, want)
		}
	}

	// The first stream resumes from its id: it gets the change it missed, not the whole fleet.
	ev = b.events(first.id).next(t)
	if ev.event != "cars" || !strings.Contains(ev.data, vin2) || strings.Contains(ev.data, vin1) {
		t.Errorf("resumed stream: %+v, want vin2's change", ev)
	}
}
