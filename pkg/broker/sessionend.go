package broker

import (
	"errors"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
)

// AppSessionHook tells its owner (the gateway) when an app's MQTT session ends, so that what
// was granted to that session (a 2FA step-up) ends with it. It reports an app client when its
// connection closes, and also when a new connection with the same client id is established:
// the new connection starts with nothing of the old one, however the old one went away.
//
// mochi calls OnDisconnect and OnSessionEstablish only for clients the AuthHook admitted, whose
// username is their token's subject and, for an app, whose client id is that user name and
// "-"; user names contain no "-", so the client id names exactly one user.
type AppSessionHook struct {
	mqtt.HookBase
	auth  *AuthHook
	mu    sync.RWMutex
	ended func(user, clientID string)
}

// NewAppSessionHook returns the hook; auth tells a takeover (a newer connection with the same
// client id admitted).
func NewAppSessionHook(auth *AuthHook) *AppSessionHook { return &AppSessionHook{auth: auth} }

// ID names the hook in mochi's logs.
func (h *AppSessionHook) ID() string { return "telematics-app-session" }

// Provides declares the events this hook handles.
func (h *AppSessionHook) Provides(b byte) bool {
	return b == mqtt.OnDisconnect || b == mqtt.OnSessionEstablish
}

// SetEnded installs f, called with the user and client id of every app session that ends.
func (h *AppSessionHook) SetEnded(f func(user, clientID string)) {
	h.mu.Lock()
	h.ended = f
	h.mu.Unlock()
}

// OnSessionEstablish ends whatever an earlier connection with cl's client id was granted,
// before cl gets its CONNACK.
func (h *AppSessionHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) { h.report(cl) }

// OnDisconnect ends the session of a closed app connection. A connection taken over by a
// newer one with its client id is left alone: the newer one's OnSessionEstablish already did
// it, and the newer one may have been granted something since.
func (h *AppSessionHook) OnDisconnect(cl *mqtt.Client, _ error, _ bool) {
	// mochi closes the old connection before it records why; the AuthHook has already
	// admitted the new one.
	if h.auth.superseded(cl) || cl.IsTakenOver() || errors.Is(cl.StopCause(), packets.ErrSessionTakenOver) {
		return
	}
	h.report(cl)
}

func (h *AppSessionHook) report(cl *mqtt.Client) {
	user := string(cl.Properties.Username)
	if !protocol.ValidUser(user) || !strings.HasPrefix(cl.ID, user+"-") {
		return // not an app (a car's client id is its VIN, a gateway's user is reserved)
	}
	h.mu.RLock()
	f := h.ended
	h.mu.RUnlock()
	if f != nil {
		f(user, cl.ID)
	}
}

// OnAppSessionEnd installs f, called (in a mochi goroutine; f must not block) with the user and
// client id of each app session that ends: its connection closed, or a new connection with its
// client id established.
func (b *Broker) OnAppSessionEnd(f func(user, clientID string)) { b.sessions.SetEnded(f) }
