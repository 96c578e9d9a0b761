package keys

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/protocol"
	"telematics/pkg/sign"
	"telematics/pkg/whitelist"
)

// record is a car's whitelist state at the gateway.
type record struct {
	Version      uint64            `json:"version"`
	AckedVersion uint64            `json:"acked_version"`
	AckedMs      int64             `json:"acked_ts,omitempty"`
	Envelope     protocol.Envelope `json:"envelope"`
	// TrustFrom is the first version that named TrustKID, the gateway's current signing key,
	// in its trust list; once the car acknowledged it, the car trusts that key and grants and
	// whitelists for it are signed with it. A rotation makes a new current key, so the hop
	// starts again for every car, also one that made the hop of an earlier rotation.
	TrustFrom uint64 `json:"trust_from,omitempty"`
	TrustKID  string `json:"trust_kid,omitempty"`
	// RetireOnAck is the version of a decommissioned car's empty whitelist: once the car
	// acknowledged it, its credentials are retired (0: nothing to do).
	RetireOnAck uint64 `json:"retire_on_ack,omitempty"`
	// Retired is set once the car's credentials were retired: it cannot connect, so it is no
	// longer waited for (rotation, unacknowledged whitelists).
	Retired bool `json:"retired,omitempty"`
}

// trusts reports whether the car is known to trust the signing key kid.
func (r record) trusts(kid string) bool {
	return r.TrustKID == kid && r.TrustFrom != 0 && r.AckedVersion >= r.TrustFrom
}

// carLock returns the mutex that serializes vin's key changes.
func (s *Service) carLock(vin string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(vin))
	return &s.carMu[h.Sum32()%uint32(len(s.carMu))]
}

// change applies mutate to a car's keys, builds and signs the next whitelist version and
// writes both with the audit record in one transaction; then it publishes the whitelist. A
// change is acknowledged to the user only after the commit, so an acknowledged change
// survives a crash.
func (s *Service) change(ctx context.Context, vin string, mutate func(tx kv.Tx, nowMs int64) (audit.Event, error)) (uint64, error) {
	return s.changeWith(ctx, vin, mutate, nil)
}

// changeWith is change, with adjust applied to the car's new whitelist record before it is
// stored (nil: nothing to adjust).
func (s *Service) changeWith(ctx context.Context, vin string, mutate func(tx kv.Tx, nowMs int64) (audit.Event, error), adjust func(*record)) (uint64, error) {
	mu := s.carLock(vin)
	mu.Lock()
	defer mu.Unlock()
	nowMs := s.clk.Now().UnixMilli()
	var env protocol.Envelope
	var wl protocol.Whitelist
	var rec record
	var rebuilt bool
	// On bbolt through the group committer: changes of many cars (a fleet-wide revocation)
	// share fsyncs. The function may run more than once (see kv.Store.Update); it only writes
	// and signs.
	err := s.st.Update(ctx, func(tx kv.Tx) error {
		ev, err := mutate(tx, nowMs)
		rebuilt = !errors.Is(err, errKeysUnchanged)
		if err != nil && rebuilt {
			return err
		}
		ev.TsMs = nowMs
		if rebuilt {
			if wl, rec, err = s.build(tx, vin, nowMs, adjust); err != nil {
				return err
			}
			env = rec.Envelope
			ev.Detail = strings.TrimSpace(ev.Detail + fmt.Sprintf(" version=%d", wl.Version))
		}
		return s.audit.AppendTx(tx, ev)
	})
	if err != nil || !rebuilt {
		return 0, err
	}
	s.mu.Lock()
	s.cache[vin] = &wl
	if cur, ok := s.recs[vin]; ok && cur.AckedVersion > rec.AckedVersion {
		rec.AckedVersion, rec.AckedMs = cur.AckedVersion, cur.AckedMs
	}
	s.recs[vin] = rec
	s.mu.Unlock()
	s.publish(ctx, vin, env)
	s.publishNewer(ctx, vin, wl.Version)
	return wl.Version, nil
}

// maxRepublish bounds how often publishNewer publishes again for one change.
const maxRepublish = 8

// publishNewer makes the retained whitelist the newest the store holds, when other replicas
// share the store: one of them may have committed a newer version of the car after this
// change and published it before this change's older one reached the broker. Each publish is
// acknowledged by the broker before the store is read again, so the last replica to publish
// reads (and republishes) the newest version.
func (s *Service) publishNewer(ctx context.Context, vin string, published uint64) {
	if !s.st.Shared() {
		return // carMu orders this gateway's changes and publications of the car
	}
	for range maxRepublish {
		var r record
		var wl *protocol.Whitelist
		err := s.st.View(ctx, func(tx kv.Tx) error {
			v, err := tx.Get(bucketWhitelists, []byte(vin))
			if err != nil || v == nil {
				return err
			}
			r, wl, err = decodeRecord([]byte(vin), v)
			return err
		})
		if err != nil {
			s.log.Warn("whitelist version not checked after publishing", "vin", vin, "err", err)
			return
		}
		if wl == nil || r.Version <= published {
			return
		}
		s.cacheRecord(vin, r, wl)
		s.publish(ctx, vin, r.Envelope)
		published = r.Version
	}
}

// errKeysUnchanged is what a change's mutate returns when it wrote nothing the whitelist
// holds: its writes and audit record commit, and no new version is made.
var errKeysUnchanged = errors.New("no key changed")

// build makes the next whitelist version of vin from the keys bucket, signs it and stores the
// record, adjusted by adjust when not nil, inside tx.
func (s *Service) build(tx kv.Tx, vin string, nowMs int64, adjust func(*record)) (protocol.Whitelist, record, error) {
	var rec record
	b, err := tx.Get(bucketWhitelists, []byte(vin))
	if err != nil {
		return protocol.Whitelist{}, rec, err
	}
	if b != nil {
		if err := json.Unmarshal(b, &rec); err != nil {
			return protocol.Whitelist{}, rec, err
		}
	}
	wl := protocol.Whitelist{V: protocol.Version, VIN: vin, Version: rec.Version + 1, IssuedAtMs: nowMs}
	keys, err := carKeysTx(tx, vin)
	if err != nil {
		return wl, rec, err
	}
	wl.Keys = keys
	sort.Slice(wl.Keys, func(i, j int) bool { return wl.Keys[i].ID < wl.Keys[j].ID })
	signer := s.ring.Current()
	if prev := s.ring.Previous(); prev != nil {
		// A rotation is under way: until this car acknowledged a version that told it to trust
		// the new key, sign with the key it trusts and tell it about the new one.
		cur := signer
		if rec.TrustKID != cur.KID() {
			rec.TrustFrom, rec.TrustKID = 0, cur.KID() // the hop to this key starts now
		}
		curPub, err := sign.EncodePublic(cur.Public())
		if err != nil {
			return wl, rec, err
		}
		if rec.trusts(cur.KID()) {
			wl.Trust = []string{curPub}
		} else {
			signer = prev
			prevPub, err := sign.EncodePublic(prev.Public())
			if err != nil {
				return wl, rec, err
			}
			wl.Trust = []string{curPub, prevPub}
			if rec.TrustFrom == 0 {
				rec.TrustFrom = wl.Version
			}
		}
	}
	env, err := whitelist.Sign(signer, wl)
	if err != nil {
		return wl, rec, err
	}
	rec.Version, rec.Envelope = wl.Version, env
	if adjust != nil {
		adjust(&rec)
	}
	b, err = json.Marshal(rec)
	if err != nil {
		return wl, rec, err
	}
	return wl, rec, tx.Put(bucketWhitelists, []byte(vin), b)
}

func (s *Service) publish(ctx context.Context, vin string, env protocol.Envelope) {
	b, err := json.Marshal(env)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.bus.Publish(pctx, protocol.VehicleTopic(vin, protocol.SuffixKeys), 1, true, b); err != nil {
		// The whitelist is committed; it goes out again on the next broker (re)connect.
		s.log.Warn("whitelist not published; will retry on reconnect", "vin", vin, "err", err)
	}
}

// vins returns the cars that have a whitelist.
func (s *Service) vins() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Collect(maps.Keys(s.recs))
}

// PublishAll publishes every car's current whitelist, retained: after a broker (re)start the
// broker has none of them. During a rotation it first re-signs the whitelists of cars that
// have not yet learned the new key.
func (s *Service) PublishAll(ctx context.Context) int {
	if s.st.Shared() {
		// Cars paired through other replicas, and their newest versions.
		if err := s.reload(); err != nil {
			s.log.Warn("whitelists not reloaded from the store before publishing", "err", err)
		}
	}
	vins := s.vins()
	s.publishVINs(ctx, vins)
	return len(vins)
}

// publishVINs publishes the cached whitelist of each of vins, retained.
func (s *Service) publishVINs(ctx context.Context, vins []string) {
	for _, vin := range vins {
		// Under the car's lock, so a change publishing a newer version cannot be overtaken
		// by this older one.
		mu := s.carLock(vin)
		mu.Lock()
		s.mu.RLock()
		env := s.recs[vin].Envelope
		s.mu.RUnlock()
		s.publish(ctx, vin, env)
		mu.Unlock()
	}
}
