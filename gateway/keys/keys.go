// Package keys is the gateway's digital-key registry: the phone keys paired with each car, the
// terms owners share a car on, and each car's signed, versioned whitelist, which is published
// retained on v/{vin}/keys and acknowledged by the car. Every key change needs the user's
// second factor and is audited in the same transaction that makes it.
package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/gateway/twofa"
	"telematics/pkg/clock"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
)

var (
	bucketKeys       = []byte("keys")       // vin/keyID -> protocol.WhitelistKey
	bucketShares     = []byte("shares")     // vin/user -> Share
	bucketWhitelists = []byte("whitelists") // vin -> record
	bucketJournal    = []byte("journal")    // vin/seq -> filed vehicle events
)

// CachedBuckets are this package's buckets that a gateway replica keeps a watched copy of
// (etcdkv.Options.Cache): the whitelist records every command's decision reads.
var CachedBuckets = []string{string(bucketWhitelists)}

// Key-change actions: the 2FA policy's names for them.
const (
	ActionPair   = twofa.ActionKeyPair
	ActionShare  = twofa.ActionKeyShare
	ActionRevoke = twofa.ActionKeyRevoke
)

// SecondFactor checks the code a key change carries. It must refuse (totp_required,
// totp_enrollment_required, …) unless the user proved a second factor now or in this session.
type SecondFactor interface {
	RequireForKeyChange(user, session, action, code string) error
}

// KeyRing holds the gateway's signing keys: the current one, and during a rotation the
// previous one, which cars that have not yet learned the new key still trust.
type KeyRing interface {
	Current() *sign.Signer
	Previous() *sign.Signer // nil when no rotation is under way
}

// Service is the key registry.
type Service struct {
	st    *store.Store
	audit *audit.Log
	ring  KeyRing
	bus   mqttc.Client
	tfa   SecondFactor
	clk   clock.Clock
	log   *slog.Logger
	// carMu serializes the key changes of one car and their publication (striped by VIN), so
	// its versions rise without gaps and the retained whitelist on the broker is always its
	// newest. Changes of different cars run side by side and share commits.
	carMu [64]sync.Mutex
	mu    sync.RWMutex                   // guards cache and recs
	cache map[string]*protocol.Whitelist // vin -> current whitelist document
	recs  map[string]record
	// CredentialsRetired is told a decommissioned car's new token id once its credentials
	// were retired (recorded in the store in the same transaction), so the broker refuses
	// every token the car holds. Set it before Subscribe; nil: nobody is told.
	CredentialsRetired func(vin, jti string)
	// SharedGroup, set before Subscribe on a replica of a cluster, subscribes through the MQTT
	// shared subscription $share/GROUP/… so that each acknowledgement and journal reaches one
	// replica; "": plain subscriptions (one gateway).
	SharedGroup string
}

// New loads every car's current whitelist from st; its changes are audited in lg. clk tells
// the time of versions, journal markers and share expiry (nil: the real clock).
func New(st *store.Store, lg *audit.Log, ring KeyRing, bus mqttc.Client, tfa SecondFactor, clk clock.Clock, log *slog.Logger) (*Service, error) {
	s := &Service{st: st, audit: lg, ring: ring, bus: bus, tfa: tfa, clk: clock.Or(clk), log: log,
		cache: map[string]*protocol.Whitelist{}, recs: map[string]record{}}
	if err := s.reload(); err != nil {
		return nil, fmt.Errorf("open key registry: %w", err)
	}
	return s, nil
}

// reload reads every car's whitelist record from the store into the cache.
func (s *Service) reload() error {
	return s.st.View(context.Background(), func(tx kv.Tx) error {
		return tx.Scan(bucketWhitelists, nil, nil, func(k, v []byte) error {
			r, wl, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			s.cacheRecord(string(k), r, wl)
			return nil
		})
	})
}

// decodeRecord decodes a car's stored whitelist record and the document it signs.
func decodeRecord(vin, v []byte) (record, *protocol.Whitelist, error) {
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return r, nil, fmt.Errorf("whitelist record of %s: %w", vin, err)
	}
	doc, err := r.Envelope.DocBytes()
	if err != nil {
		return r, nil, err
	}
	var wl protocol.Whitelist
	if err := json.Unmarshal(doc, &wl); err != nil {
		return r, nil, err
	}
	return r, &wl, nil
}

// cacheRecord keeps r (and its document wl) as vin's record unless the cache holds a newer
// version or acknowledgement already.
func (s *Service) cacheRecord(vin string, r record, wl *protocol.Whitelist) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.recs[vin]; ok && (cur.Version > r.Version || cur.Version == r.Version && cur.AckedVersion > r.AckedVersion) {
		return
	}
	s.cache[vin] = wl
	s.recs[vin] = r
}

// refresh reads vin's record from the store into the cache when the store is shared with
// other gateway replicas, whose changes this replica's cache does not see otherwise. On a
// store of its own the cache is always current (every change goes through it). An error
// leaves the cache as it was.
func (s *Service) refresh(vin string) {
	if !s.st.Shared() {
		return
	}
	err := s.st.View(context.Background(), func(tx kv.Tx) error {
		_, err := s.WhitelistTx(tx, vin)
		return err
	})
	if err != nil {
		s.log.Warn("whitelist not refreshed from the store", "vin", vin, "err", err)
	}
}

// WhitelistTx returns vin's current whitelist as tx reads it (nil: none), and caches it: a
// replica's command decision reads it in the transaction that records the decision, so a key
// change committed meanwhile by another replica makes that transaction run again.
func (s *Service) WhitelistTx(tx kv.Tx, vin string) (*protocol.Whitelist, error) {
	v, err := tx.Get(bucketWhitelists, []byte(vin))
	if err != nil || v == nil {
		return nil, err
	}
	r, wl, err := decodeRecord([]byte(vin), v)
	if err != nil {
		return nil, err
	}
	s.cacheRecord(vin, r, wl)
	return wl, nil
}

func keyOf(vin, id string) []byte { return []byte(vin + "/" + id) }

// carKeysTx returns vin's keys (revoked ones too) in key id order, inside tx.
func carKeysTx(tx kv.Tx, vin string) ([]protocol.WhitelistKey, error) {
	var out []protocol.WhitelistKey
	err := tx.Scan(bucketKeys, []byte(vin+"/"), nil, func(_, v []byte) error {
		var key protocol.WhitelistKey
		if err := json.Unmarshal(v, &key); err != nil {
			return err
		}
		out = append(out, key)
		return nil
	})
	return out, err
}

func (s *Service) vehicle(vin string) (store.Vehicle, error) {
	v, err := s.st.GetVehicle(vin)
	if errors.Is(err, store.ErrNotFound) {
		return v, protocol.Refuse(protocol.ReasonVehicleUnknown, "no vehicle %s", vin)
	}
	return v, err
}

// Subscribe registers the acknowledgement and journal handlers.
func (s *Service) Subscribe(ctx context.Context) error {
	prefix := ""
	if s.SharedGroup != "" {
		prefix = "$share/" + s.SharedGroup + "/"
	}
	if err := s.bus.Subscribe(ctx, prefix+"v/+/keys/ack", 1, s.OnAck); err != nil {
		return err
	}
	return s.bus.Subscribe(ctx, prefix+"v/+/events", 1, s.OnEvent)
}
