package console

import (
	"fmt"
	"sort"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/twofa"
)

// Alerts are what an operator should look at now, computed by the fleet watcher at each look
// and sent to every event stream when they change (event "alerts", the whole list):
//
//	lockout             a user locked out by twofa (from its audit records), until it ends
//	totp_failures       a burst of 2FA failures across users (AlertFailureBurst within a minute)
//	revocation_unacked  a car has not acknowledged its whitelist for AlertRevocationAfter
//	telemetry_lost      an online car sent no telemetry for AlertTelemetryAfter
//	offline             a car that reported itself offline (its last will)
//	store_unready       the gateway is not ready (Deps.Ready) or the store could not be read

// maxAlerts bounds the list: a fleet-wide outage is one screen, not 20,000 lines.
const maxAlerts = 200

// Alert is one line of the alerts panel.
type Alert struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject,omitempty"` // a VIN or a user name
	Message string `json:"message"`
	SinceMs int64  `json:"since,omitempty"`
}

// alertState is what the watcher remembers between looks to compute the alerts.
type alertState struct {
	lockouts map[string]int64 // user -> lockout end (Unix ms)
	failures []int64          // times of recent 2FA failures (Unix ms), oldest first
	readyErr error            // Deps.Ready's last answer
	list     []Alert
	key      string // the list's fingerprint, to tell a change
	seq      uint64 // bumped at every change
}

// noteAudit records the lockouts and 2FA failures among new audit records.
func (w *watcher) noteAudit(evs []audit.Event, from uint64) {
	a := &w.alerts
	for i := len(evs) - 1; i >= 0; i-- { // oldest first
		ev := evs[i]
		if ev.Seq <= from || ev.Kind != audit.KindTwoFactor {
			continue
		}
		switch ev.Outcome {
		case string(twofa.EventFailure):
			a.failures = append(a.failures, ev.TsMs)
		case string(twofa.EventLockout):
			until := ev.TsMs
			if st, err := w.c.d.TwoFA.Status(ev.User); err == nil && !st.LockedUntil.IsZero() {
				until = st.LockedUntil.UnixMilli()
			}
			if a.lockouts == nil {
				a.lockouts = map[string]int64{}
			}
			a.lockouts[ev.User] = until
		case string(twofa.EventLockoutCleared), string(twofa.EventReset):
			delete(a.lockouts, ev.User)
		}
	}
}

// computeAlerts rebuilds the list from the cars and the remembered events; it reports whether
// the list changed. storeErr is the look's store error, if any.
func (w *watcher) computeAlerts(fleet map[string]Car, storeErr error) bool {
	cfg, a, now := w.c.cfg, &w.alerts, w.c.now()
	nowMs := now.UnixMilli()
	var out []Alert
	if storeErr != nil {
		out = append(out, Alert{Kind: "store_unready", Message: "the store could not be read: " + storeErr.Error()})
	} else if a.readyErr != nil {
		out = append(out, Alert{Kind: "store_unready", Message: "the gateway is not ready: " + a.readyErr.Error()})
	}
	for user, until := range a.lockouts {
		if until <= nowMs {
			delete(a.lockouts, user)
			continue
		}
		out = append(out, Alert{Kind: "lockout", Subject: user, Message: fmt.Sprintf("%s is locked out until %s", user,
			time.UnixMilli(until).UTC().Format("15:04:05 UTC")), SinceMs: until})
	}
	a.failures = recentFailures(a.failures, now)
	if n := len(a.failures); n >= cfg.AlertFailureBurst {
		out = append(out, Alert{Kind: "totp_failures", Message: fmt.Sprintf("%d 2FA failures in the last minute", n), SinceMs: a.failures[0]})
	}
	var perCar []Alert
	for _, car := range fleet {
		switch {
		case car.Decommission:
		case car.WLWaitingFromMs != 0 && nowMs-car.WLWaitingFromMs >= cfg.AlertRevocationAfter.Milliseconds():
			perCar = append(perCar, Alert{Kind: "revocation_unacked", Subject: car.VIN, SinceMs: car.WLWaitingFromMs,
				Message: fmt.Sprintf("%s has not acknowledged whitelist v%d (it has v%d)", car.VIN, car.WLVersion, car.WLAcked)})
		}
		switch {
		case car.Decommission:
		case car.Status == "offline":
			perCar = append(perCar, Alert{Kind: "offline", Subject: car.VIN, SinceMs: car.LastSeenMs, Message: car.VIN + " is offline"})
		case car.Online && car.telemetryMs != 0 && nowMs-car.telemetryMs >= cfg.AlertTelemetryAfter.Milliseconds():
			perCar = append(perCar, Alert{Kind: "telemetry_lost", Subject: car.VIN, SinceMs: car.telemetryMs,
				Message: car.VIN + " is online but sends no telemetry"})
		}
	}
	byKindSubject := func(as []Alert) {
		sort.Slice(as, func(i, j int) bool {
			if as[i].Kind != as[j].Kind {
				return as[i].Kind < as[j].Kind
			}
			return as[i].Subject < as[j].Subject
		})
	}
	byKindSubject(out)
	byKindSubject(perCar) // only the cars with an alert are sorted, not the fleet
	out = append(out, perCar...)
	if len(out) > maxAlerts {
		more := len(out) - maxAlerts + 1
		out = append(out[:maxAlerts-1], Alert{Kind: "more", Message: fmt.Sprintf("and %d more", more)})
	}
	key := fmt.Sprint(out)
	if key == a.key {
		return false
	}
	if out == nil {
		out = []Alert{}
	}
	a.list, a.key = out, key
	a.seq++
	return true
}

// recentFailures drops the failures (Unix ms, oldest first) older than the burst's minute.
func recentFailures(failures []int64, now time.Time) []int64 {
	window := now.UnixMilli() - time.Minute.Milliseconds()
	i := 0
	for i < len(failures) && failures[i] < window {
		i++
	}
	return failures[i:]
}
