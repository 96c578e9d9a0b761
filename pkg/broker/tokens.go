package broker

import (
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

// FollowCarTokens makes a broker that runs apart from the gateway (the standalone broker)
// retire car tokens the way the embedded one does: it listens on v/_tokens/+ for the gateway's
// signed CarToken messages and, from then on, refuses every token of such a car other than its
// current one and closes the sessions opened with them. A message not signed by one of keys,
// for another topic's car, or not newer than the one in force for that car is ignored.
func (b *Broker) FollowCarTokens(keys []*ecdsa.PublicKey) error {
	f := &tokenFollower{b: b, keys: keys, current: map[string]protocol.CarToken{}}
	if err := b.server.Subscribe(protocol.CarTokenFilter, 1, f.onCarToken); err != nil {
		return fmt.Errorf("subscribe to the gateway's car tokens: %w", err)
	}
	b.auth.SetRetired(f.retired)
	return nil
}

type tokenFollower struct {
	b    *Broker
	keys []*ecdsa.PublicKey

	mu      sync.RWMutex
	current map[string]protocol.CarToken // by VIN
}

func (f *tokenFollower) retired(id Identity) bool {
	if id.Role != protocol.RoleVehicle {
		return false
	}
	f.mu.RLock()
	cur, ok := f.current[id.Subject]
	f.mu.RUnlock()
	return ok && cur.JTI != id.TokenID
}

func (f *tokenFollower) onCarToken(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
	var env protocol.Envelope
	if err := json.Unmarshal(pk.Payload, &env); err != nil {
		f.b.log.Warn("car token ignored: not a signed envelope", "err", err)
		return
	}
	doc, err := sign.VerifyAny(env, f.keys)
	if err != nil {
		f.b.log.Warn("car token ignored: not signed by the gateway", "err", err)
		return
	}
	var ct protocol.CarToken
	if err := protocol.Decode(doc, &ct); err != nil || ct.V != protocol.Version || !protocol.ValidVIN(ct.VIN) ||
		ct.JTI == "" || strings.TrimPrefix(pk.TopicName, protocol.CarTokenPrefix) != ct.VIN {
		f.b.log.Warn("car token ignored: malformed", "topic", pk.TopicName, "err", err)
		return
	}
	f.mu.Lock()
	prev := f.current[ct.VIN]
	if ct.IssuedAtMs <= prev.IssuedAtMs {
		f.mu.Unlock()
		return // a replay of an older one, or the same one again
	}
	f.current[ct.VIN] = ct
	f.mu.Unlock()
	// The gateway signs the current tokens again at each of its connects: only a new token
	// retires a session.
	if ct.JTI != prev.JTI {
		f.b.DropRetired(ct.VIN)
	}
}
