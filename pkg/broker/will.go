package broker

import (
	"encoding/json"
	"errors"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
)

// StatusWillHook dates a car's "offline" will when the broker publishes it.
//
// A car sets its will (v/{vin}/status, "offline", retained) when it connects, so the will's
// timestamp is the connection's start, older than the "online" the car publishes right after.
// The gateway keeps the newest status by timestamp (a late retained will must not mark a
// reconnected car offline), so a will dated at connect time would always lose, and a car that
// vanished would stay "online". This hook re-dates the will to the moment the broker gives up
// on the connection. A will published because the car's session was taken over by its own new
// connection keeps its original date: it is older than the new connection's "online", and the
// car is not offline.
type StatusWillHook struct {
	mqtt.HookBase
	auth *AuthHook
	now  func() time.Time
}

// NewStatusWillHook returns the hook; auth tells a takeover (a newer connection of the same
// client admitted), now is the clock (nil: time.Now).
func NewStatusWillHook(auth *AuthHook, now func() time.Time) *StatusWillHook {
	if now == nil {
		now = time.Now
	}
	return &StatusWillHook{auth: auth, now: now}
}

// ID names the hook in mochi's logs.
func (h *StatusWillHook) ID() string { return "telematics-status-will" }

// Provides declares the one event this hook handles.
func (h *StatusWillHook) Provides(b byte) bool { return b == mqtt.OnWill }

// OnWill returns the will to publish: a car's status will re-dated to now, anything else as it
// is.
func (h *StatusWillHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	vin, suffix, ok := protocol.ParseVehicleTopic(will.TopicName)
	if !ok || suffix != protocol.SuffixStatus || vin != cl.ID {
		return will, nil
	}
	// mochi closes the old connection before it records why, so the stop cause may not say
	// "taken over" yet; the AuthHook has already admitted the new connection.
	if h.auth.superseded(cl) || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return will, nil
	}
	var st protocol.VehicleStatus
	if err := protocol.Decode(will.Payload, &st); err != nil || st.Status != protocol.StatusOffline {
		return will, nil
	}
	st.TsMs = h.now().UnixMilli()
	b, err := json.Marshal(st)
	if err != nil {
		return will, nil
	}
	will.Payload = b
	return will, nil
}
