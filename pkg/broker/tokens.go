package broker

import (
	"crypto/ecdsa"
	"encoding/json"
	"errors"
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
//
// With Config.StateFile set, what it learnt survives a restart: the file is read here (each
// message's signature checked again) and rewritten whenever a car's current token changes, so
// a restarted broker refuses retired tokens before the gateway is back to tell it again.
func (b *Broker) FollowCarTokens(keys []*ecdsa.PublicKey) error {
	f := &tokenFollower{b: b, keys: keys, current: map[string]carTokenState{}, path: b.cfg.StateFile}
	if f.path == "" {
		b.log.Warn("no state_file: after a restart this broker admits retired car tokens again until the gateway reconnects")
	} else {
		if err := f.load(); err != nil {
			return err
		}
		f.dirty, f.stop, f.stopped = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
		go f.persistLoop()
		b.mu.Lock()
		b.tokens = f
		b.mu.Unlock()
	}
	b.auth.SetRetired(f.retired)
	if err := b.server.Subscribe(protocol.CarTokenFilter, 1, f.onCarToken); err != nil {
		return fmt.Errorf("subscribe to the gateway's car tokens: %w", err)
	}
	return nil
}

type tokenFollower struct {
	b    *Broker
	keys []*ecdsa.PublicKey
	path string // the state file; "" keeps nothing across restarts

	mu      sync.RWMutex
	current map[string]carTokenState // by VIN

	// persistLoop's signals: dirty (capacity 1) asks for a write; stop ends the loop after a
	// last write; stopped is closed when it has ended.
	dirty, stop, stopped chan struct{}
	closeOnce            sync.Once
}

// carTokenState is the CarToken in force for a car, with the signed message that said so.
type carTokenState struct {
	protocol.CarToken
	env protocol.Envelope
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
	ct, err := f.verify(env)
	if err != nil {
		f.b.log.Warn("car token ignored", "topic", pk.TopicName, "err", err)
		return
	}
	if strings.TrimPrefix(pk.TopicName, protocol.CarTokenPrefix) != ct.VIN {
		f.b.log.Warn("car token ignored: for another car's topic", "topic", pk.TopicName)
		return
	}
	f.mu.Lock()
	prev := f.current[ct.VIN]
	if ct.IssuedAtMs <= prev.IssuedAtMs {
		f.mu.Unlock()
		return // a replay of an older one, or the same one again
	}
	if ct.JTI != prev.JTI {
		f.current[ct.VIN] = carTokenState{CarToken: ct, env: env}
	} else {
		// The same token signed again: newer, but the state file keeps the first message
		// that named it, so a gateway reconnect does not rewrite the file for every car.
		prev.IssuedAtMs = ct.IssuedAtMs
		f.current[ct.VIN] = prev
	}
	f.mu.Unlock()
	// The gateway signs the current tokens again at each of its connects: only a new token
	// retires a session.
	if ct.JTI != prev.JTI {
		f.markDirty()
		f.b.DropRetired(ct.VIN)
	}
}

// verify checks a CarToken message's signature and fields.
func (f *tokenFollower) verify(env protocol.Envelope) (protocol.CarToken, error) {
	doc, err := sign.VerifyAny(env, f.keys)
	if err != nil {
		return protocol.CarToken{}, fmt.Errorf("not signed by the gateway: %w", err)
	}
	var ct protocol.CarToken
	if err := protocol.Decode(doc, &ct); err != nil {
		return ct, fmt.Errorf("malformed: %w", err)
	}
	if ct.V != protocol.Version || !protocol.ValidVIN(ct.VIN) || ct.JTI == "" {
		return ct, errors.New("malformed: version, vin or jti")
	}
	return ct, nil
}
