package console

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/clock/clocktest"
	"telematics/pkg/protocol"
)

func TestAlertsArriveOverTheEventStream(t *testing.T) {
	f := newFixture(t)
	if err := f.st.AddVehicles([]store.Vehicle{{VIN: vin1}, {VIN: vin2}}); err != nil {
		t.Fatal(err)
	}
	b, _ := f.enrolled("victor")
	s := b.events("")
	if ev := s.next(t); ev.event != "fleet" {
		t.Fatalf("first event: %+v", ev)
	}
	now := f.clock.Now().UnixMilli()
	f.twins.set(store.Twin{VIN: vin1, Status: protocol.StatusOffline, StatusMs: now})
	f.twins.set(store.Twin{VIN: vin2, Status: protocol.StatusOnline, StatusMs: now, TelemetryMs: now - 2*time.Minute.Milliseconds()})
	for _, u := range []string{"ursula", "walter", "xavier"} {
		for i := 0; i < 20; i++ {
			if err := f.tfa.RecordFailure(u, "test", twofa.FactorTOTP); protocol.ReasonOf(err) == protocol.ReasonLockedOut {
				break
			}
		}
	}
	want := []string{"offline " + vin1, "telemetry_lost " + vin2, "lockout ursula", "lockout xavier", "totp_failures "}
	for {
		ev := s.next(t)
		if ev.event != "alerts" {
			continue
		}
		var as []Alert
		if err := json.Unmarshal([]byte(ev.data), &as); err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, a := range as {
			have[a.Kind+" "+a.Subject] = true
		}
		all := true
		for _, w := range want {
			all = all && have[w]
		}
		if all {
			break
		}
	}
	// A lockout's end ends its alert.
	f.clock.Advance(time.Hour)
	for {
		ev := s.next(t)
		if ev.event == "alerts" && !strings.Contains(ev.data, `"lockout"`) && !strings.Contains(ev.data, "totp_failures") {
			break
		}
	}
}

func TestAlertRules(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC))
	now := clk.Now().UnixMilli()
	notReady := errors.New("store: etcd unreachable")
	c := &Console{cfg: DefaultConfig(), clock: clk}
	w := &watcher{c: c}
	w.alerts.readyErr = notReady
	fleet := map[string]Car{
		"A": {VIN: "A", Online: true, Status: "online", WLVersion: 3, WLAcked: 2, WLWaitingFromMs: now - 6*time.Minute.Milliseconds(), telemetryMs: now},
		"B": {VIN: "B", Online: true, Status: "online", WLVersion: 3, WLAcked: 2, WLWaitingFromMs: now - time.Minute.Milliseconds(), telemetryMs: now},
		"C": {VIN: "C", Status: "offline", Decommission: true},
	}
	if !w.computeAlerts(fleet, nil) {
		t.Fatal("no change at the first computation")
	}
	got := []string{}
	for _, a := range w.alerts.list {
		got = append(got, a.Kind+" "+a.Subject)
	}
	if strings.Join(got, ",") != "store_unready ,revocation_unacked A" {
		t.Errorf("alerts: %v", got)
	}
	if w.computeAlerts(fleet, nil) {
		t.Error("the same alerts again counted as a change")
	}
	w.alerts.readyErr = nil
	if !w.computeAlerts(fleet, errors.New("read vehicles: boom")) || !strings.Contains(w.alerts.list[0].Message, "boom") {
		t.Errorf("store error: %+v", w.alerts.list)
	}
	big := map[string]Car{}
	for i := 0; i < 3*maxAlerts; i++ {
		vin := strings.Repeat("X", 10) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		big[vin] = Car{VIN: vin, Status: "offline"}
	}
	w.computeAlerts(big, nil)
	if n := len(w.alerts.list); n != maxAlerts || w.alerts.list[n-1].Kind != "more" {
		t.Errorf("%d alerts, last %+v", n, w.alerts.list[n-1])
	}
}
