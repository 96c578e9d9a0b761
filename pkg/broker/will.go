package broker

import (
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/clock"
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
	auth  *AuthHook
	clock clock.Clock
}

// NewStatusWillHook returns the hook; auth tells a takeover (a newer connection of the same
// client admitted); clk dates the wills (nil: the real clock).
func NewStatusWillHook(auth *AuthHook, clk clock.Clock) *StatusWillHook {
	return &StatusWillHook{auth: auth, clock: clock.Or(clk)}
}

// ID names the hook in mochi's logs.
func (h *StatusWillHook) ID() string { return "telematics-status-will" }

// Provides declares the one event this hook handles.
func (h *StatusWillHook) Provides(b byte) bool { return b == mqtt.OnWill }

// OnWill returns the will to publish: a car's status will re-dated to now, anything else as it
// is.
func (h *StatusWillHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	// mochi closes the old connection before it records why, so the stop cause may not say
	// "taken over" yet; the AuthHook has already admitted the new connection.
	if h.auth.superseded(cl) || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return will, nil
	}
	return redateStatusWill(cl, will, h.clock.Now()), nil
}

// redateStatusWill returns cl's will re-dated to now when it is cl's car's "offline" status,
// and will unchanged otherwise.
func redateStatusWill(cl *mqtt.Client, will mqtt.Will, now time.Time) mqtt.Will {
	vin, suffix, ok := protocol.ParseVehicleTopic(will.TopicName)
	if !ok || suffix != protocol.SuffixStatus || vin != cl.ID {
		return will
	}
	var st protocol.VehicleStatus
	if err := protocol.Decode(will.Payload, &st); err != nil || st.Status != protocol.StatusOffline {
		return will
	}
	st.TsMs = now.UnixMilli()
	b, err := json.Marshal(st)
	if err != nil {
		return will
	}
	will.Payload = b
	return will
}

// DropRetired closes car vin's session if its token is retired now, and reports whether it
// did. A car with new credentials then connects with them; one with only the old token is
// refused. The will goes out first, dated now: mochi sends the will of a client it stops
// itself only if the client's reader happens to be blocked on the socket, not when it is
// between two packets.
func (b *Broker) DropRetired(vin string) bool {
	cl := b.auth.retiredClient(vin)
	if cl == nil {
		return false
	}
	if atomic.CompareAndSwapUint32(&cl.Properties.Will.Flag, 1, 0) {
		will := redateStatusWill(cl, cl.Properties.Will, b.clock.Now())
		if err := b.server.Publish(will.TopicName, will.Payload, will.Retain, will.Qos); err != nil {
			b.log.Warn("will of a retired session not published", "client_id", clip(cl.ID), "err", err)
		}
	}
	b.log.Info("mqtt session closed: its token was retired", "client_id", clip(cl.ID))
	cl.Stop(errTokenRetired)
	b.auth.remove(cl)
	return true
}

// DropUser closes every session of app user, whose tokens were ended (a password change, an
// account disabled or deleted), and returns how many it closed. The retired-token check
// (SetRetired) must already refuse those tokens, or the app just reconnects.
func (b *Broker) DropUser(user string) int {
	n := 0
	for _, cl := range b.auth.appClients(user) {
		b.log.Info("mqtt session closed: the user's tokens were ended", "client_id", clip(cl.ID))
		cl.Stop(errUserTokensEnded)
		b.auth.remove(cl)
		n++
	}
	return n
}
