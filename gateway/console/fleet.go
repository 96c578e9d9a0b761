package console

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"telematics/gateway/httpapi"
	"telematics/gateway/store"
	"telematics/pkg/protocol"
)

// Car is one car of the fleet list: what an operator scans for. Absent signals are null.
type Car struct {
	VIN    string `json:"vin"`
	Online bool   `json:"online"`
	// Status is the car's last status (online, offline), "" if it never reported.
	Status       string   `json:"status"`
	Locked       *bool    `json:"locked"`
	BatteryPct   *float64 `json:"battery"`
	SpeedKmh     *float64 `json:"speed"`
	Lat          *float64 `json:"lat"`
	Lon          *float64 `json:"lon"`
	LastSeenMs   int64    `json:"last_seen"` // the newest status or telemetry time, 0: never
	Decommission bool     `json:"decommissioned,omitempty"`
	// Whitelist: the version issued, the one the car acknowledged, and when the version the car
	// has not yet acknowledged was issued (0 when in sync): how long a revocation has waited.
	WLVersion       uint64 `json:"wl_version"`
	WLAcked         uint64 `json:"wl_acked"`
	WLWaitingFromMs int64  `json:"wl_waiting_from,omitempty"`

	telemetryMs int64 // the newest telemetry (alerts)
}

// same reports whether c and o hold the same values (the watcher does not encode a car again
// that is the same as at its last look).
func (c Car) same(o Car) bool {
	if !samePtr(c.Locked, o.Locked) || !samePtr(c.BatteryPct, o.BatteryPct) || !samePtr(c.SpeedKmh, o.SpeedKmh) ||
		!samePtr(c.Lat, o.Lat) || !samePtr(c.Lon, o.Lon) {
		return false
	}
	c.Locked, c.BatteryPct, c.SpeedKmh, c.Lat, c.Lon = nil, nil, nil, nil, nil
	o.Locked, o.BatteryPct, o.SpeedKmh, o.Lat, o.Lon = nil, nil, nil, nil, nil
	return c == o
}

func samePtr[T comparable](a, b *T) bool { return a == b || (a != nil && b != nil && *a == *b) }

// Fleet is the event stream's "fleet" event: the whole fleet in VIN order, sent in parts of
// at most fleetChunk cars (More set on every part but the last), and the id of the last
// change it includes, from which the stream continues.
type Fleet struct {
	Cars    []Car  `json:"cars"`
	EventID string `json:"event_id"`
	NowMs   int64  `json:"now"`
	More    bool   `json:"more,omitempty"`
}

// FleetPage is GET /console/api/fleet?after=VIN&limit=N&q=TEXT&filter=F: the cars matching q
// (part of the VIN) and filter (online, offline, unlocked, waiting: a whitelist not yet on
// the car) in VIN order after the cursor, at most limit of them.
type FleetPage struct {
	Cars  []Car `json:"cars"`
	Total int   `json:"total"` // the cars matching q and filter
	Fleet int   `json:"fleet"` // every car
	// Next is the cursor of the next page (its after=), "" when this page is the last.
	Next    string `json:"next,omitempty"`
	EventID string `json:"event_id"`
	NowMs   int64  `json:"now"`
}

// Bounds of GET /console/api/fleet and of the stream's fleet event.
const (
	fleetPageDefault = 500
	fleetPageMax     = 2000
	fleetChunk       = 2000 // cars per part of the stream's fleet event
)

// fleetFilters are the fleet list's filters, by the name the page and the API use.
var fleetFilters = map[string]func(Car) bool{
	"":         func(Car) bool { return true },
	"online":   func(c Car) bool { return c.Online },
	"offline":  func(c Car) bool { return !c.Online },
	"unlocked": func(c Car) bool { return c.Locked != nil && !*c.Locked },
	"waiting":  func(c Car) bool { return c.WLVersion > c.WLAcked },
}

// CarPage is GET /console/api/cars/{vin}.
type CarPage struct {
	Car
	CreatedMs int64 `json:"created"`
	// DeviceCert: the car's current credentials include a device certificate (the console's
	// reissue then offers a new one by default).
	DeviceCert bool           `json:"device_cert"`
	Signals    map[string]any `json:"signals"`
	Users      []CarUser      `json:"users"`
	Keys       []CarKey       `json:"keys"`
	NowMs      int64          `json:"now"`
}

// CarUser is a user's role on the car.
type CarUser struct {
	User string `json:"user"`
	Role string `json:"role"`
}

// CarKey is a key of the car's current whitelist; Acked says whether the car has the version
// that holds it as it is now.
type CarKey struct {
	ID          string   `json:"id"`
	User        string   `json:"user"`
	Role        string   `json:"role"`
	Channels    []string `json:"channels"`
	Label       string   `json:"label,omitempty"`
	NotBeforeMs int64    `json:"not_before,omitempty"`
	NotAfterMs  int64    `json:"not_after,omitempty"`
	RevokedAtMs int64    `json:"revoked_at,omitempty"`
	Acked       bool     `json:"acked"`
}

// summarize is v's fleet-list line from the twin and the whitelist state.
func (c *Console) summarize(v store.Vehicle) Car { return c.summarizeWith(v, nil) }

// summarizeWith is summarize with the whitelist state of prev, when not nil, instead of
// reading it again.
func (c *Console) summarizeWith(v store.Vehicle, prev *Car) Car {
	car := Car{VIN: v.VIN, Decommission: v.DecommissionedMs != 0}
	if tw, ok := c.d.Twins.Twin(v.VIN); ok {
		car.Status = tw.Status
		car.Online = tw.Status == protocol.StatusOnline
		car.LastSeenMs = max(tw.StatusMs, tw.TelemetryMs)
		car.telemetryMs = tw.TelemetryMs
		car.Locked = boolSignal(tw.Signals, protocol.VSSIsLocked)
		car.BatteryPct = numSignal(tw.Signals, protocol.VSSSoC)
		car.SpeedKmh = numSignal(tw.Signals, protocol.VSSSpeed)
		car.Lat = numSignal(tw.Signals, protocol.VSSLatitude)
		car.Lon = numSignal(tw.Signals, protocol.VSSLongitude)
	}
	if prev != nil {
		car.WLVersion, car.WLAcked, car.WLWaitingFromMs = prev.WLVersion, prev.WLAcked, prev.WLWaitingFromMs
	} else if c.d.Whitelists != nil {
		st := c.d.Whitelists.Status(v.VIN)
		car.WLVersion, car.WLAcked = st.Version, st.AckedVersion
		if st.Version > st.AckedVersion {
			if wl := c.d.Whitelists.Whitelist(v.VIN); wl != nil {
				car.WLWaitingFromMs = wl.IssuedAtMs
			}
		}
	}
	return car
}

func boolSignal(s map[string]any, k string) *bool {
	if b, ok := s[k].(bool); ok {
		return &b
	}
	return nil
}

func numSignal(s map[string]any, k string) *float64 {
	switch v := s[k].(type) {
	case float64:
		return &v
	case int:
		f := float64(v)
		return &f
	case int64:
		f := float64(v)
		return &f
	}
	return nil
}

func (c *Console) fleet(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	limit := fleetPageDefault
	if s := qv.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > fleetPageMax {
			httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, fmt.Sprintf("limit: want 1 to %d", fleetPageMax))
			return
		}
		limit = n
	}
	keep, ok := fleetFilters[qv.Get("filter")]
	if !ok {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "filter: want online, offline, unlocked or waiting")
		return
	}
	q := strings.ToUpper(qv.Get("q"))
	after := strings.ToUpper(qv.Get("after"))
	if len(q) > 17 || len(after) > 17 || !vinChars(q) || !vinChars(after) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "q and after: at most 17 letters and digits")
		return
	}
	cars, id := c.watch.snapshot() // in VIN order
	page := FleetPage{Cars: []Car{}, Fleet: len(cars), EventID: id, NowMs: c.now().UnixMilli()}
	for _, car := range cars {
		if !strings.Contains(car.VIN, q) || !keep(car) {
			continue
		}
		page.Total++
		if car.VIN <= after && after != "" {
			continue
		}
		if len(page.Cars) < limit {
			page.Cars = append(page.Cars, car)
		} else if page.Next == "" {
			page.Next = page.Cars[len(page.Cars)-1].VIN
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, page)
}

// vinChars reports whether s holds only letters and digits (a VIN or a part of one).
func vinChars(s string) bool {
	for _, r := range s {
		if (r < '0' || r > '9') && (r < 'A' || r > 'Z') {
			return false
		}
	}
	return true
}

func (c *Console) car(w http.ResponseWriter, r *http.Request) {
	vin := strings.ToUpper(r.PathValue("vin"))
	if !protocol.ValidVIN(vin) {
		httpapi.Error(w, http.StatusBadRequest, protocol.ReasonBadRequest, "not a VIN (17 characters, no I, O or Q)")
		return
	}
	v, err := c.d.Store.GetVehicle(vin)
	if errors.Is(err, store.ErrNotFound) {
		httpapi.Error(w, http.StatusNotFound, protocol.ReasonVehicleUnknown, "no car "+vin)
		return
	}
	if err != nil {
		httpapi.Fail(w, c.log, err)
		return
	}
	page := CarPage{Car: c.summarize(v), CreatedMs: v.CreatedMs, DeviceCert: v.CertSerial != "", Signals: map[string]any{}, Users: []CarUser{}, Keys: []CarKey{},
		NowMs: c.now().UnixMilli()}
	if tw, ok := c.d.Twins.Twin(vin); ok && tw.Signals != nil {
		page.Signals = tw.Signals
	}
	for u, role := range v.Users {
		page.Users = append(page.Users, CarUser{User: u, Role: string(role)})
	}
	sort.Slice(page.Users, func(i, j int) bool { return page.Users[i].User < page.Users[j].User })
	if c.d.Whitelists != nil {
		st := c.d.Whitelists.Status(vin)
		for _, k := range st.Keys {
			page.Keys = append(page.Keys, CarKey{ID: k.ID, User: k.User, Role: string(k.Role), Channels: k.Channels, Label: k.Label,
				NotBeforeMs: k.NotBeforeMs, NotAfterMs: k.NotAfterMs, RevokedAtMs: k.RevokedAtMs, Acked: st.InSync})
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, page)
}
