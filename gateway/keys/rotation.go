package keys

import (
	"context"
	"errors"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/gateway/store"
	"telematics/pkg/sign"
)

// GrantSigner is the key a grant for vin must be signed with: the current key once the car
// trusts it, the previous key while a rotation has not reached the car. It is also the key a
// car's credentials name, so that a car provisioned during a rotation trusts what its first
// whitelist is signed with, and then makes the hop like every other car.
func (s *Service) GrantSigner(vin string) *sign.Signer {
	cur, prev := s.ring.Current(), s.ring.Previous()
	if prev == nil {
		return cur
	}
	s.mu.RLock()
	r := s.recs[vin]
	s.mu.RUnlock()
	if r.trusts(cur.KID()) {
		return cur
	}
	return prev
}

// Rotate re-signs every car's whitelist after the signing key changed, so each learns to
// trust the new key from a document signed by the old one.
func (s *Service) Rotate(ctx context.Context) error {
	for _, vin := range s.vins() {
		if s.retired(vin) {
			continue // a decommissioned car that cannot connect any more
		}
		_, err := s.change(ctx, vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
			return audit.Event{Kind: audit.KindKeys, VIN: vin, Outcome: "signing_key_rotated"}, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// WhitelistUnpaired gives every car in service that has no whitelist yet (nobody paired a
// phone key with it) an empty one, during a rotation: no other document would ever tell such a
// car to trust the new signing key, and `gateway rotate-key --retire-previous` waits for every
// car to acknowledge one signed by it. Like Rotate's, the whitelist is signed by the key the car
// trusts and names the new one. It returns how many cars got one; nothing is done when no
// rotation is under way.
func (s *Service) WhitelistUnpaired(ctx context.Context) (int, error) {
	if s.ring.Previous() == nil {
		return 0, nil
	}
	vs, err := s.st.ListVehicles()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, v := range vs {
		if v.RetiredMs != 0 || v.DecommissionedMs != 0 {
			continue // it will never need another key
		}
		s.mu.RLock()
		_, has := s.recs[v.VIN]
		s.mu.RUnlock()
		if has {
			continue
		}
		_, err := s.change(ctx, v.VIN, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
			if wl, err := tx.Get(bucketWhitelists, []byte(v.VIN)); err != nil {
				return audit.Event{}, err
			} else if wl != nil {
				return audit.Event{}, errHasWhitelist // made meanwhile by a pairing
			}
			if _, err := store.GetVehicleTx(tx, v.VIN); err != nil {
				return audit.Event{}, err
			}
			return audit.Event{Kind: audit.KindKeys, VIN: v.VIN, Outcome: "signing_key_rotated", Detail: "empty whitelist for the hop"}, nil
		})
		if errors.Is(err, errHasWhitelist) {
			continue
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// errHasWhitelist aborts WhitelistUnpaired's change of a car that got a whitelist meanwhile.
var errHasWhitelist = errors.New("the car has a whitelist")
