package keys

import (
	"context"
	"encoding/json"

	"telematics/gateway/audit"
	"telematics/gateway/kv"
	"telematics/pkg/mqttc"
	"telematics/pkg/protocol"
)

// OnAck records a car's acknowledgement of a whitelist version.
func (s *Service) OnAck(m mqttc.Message) {
	vin, suffix, ok := protocol.ParseVehicleTopic(m.Topic)
	if !ok || suffix != protocol.SuffixKeysAck {
		return
	}
	var ack protocol.KeysAck
	if err := protocol.Decode(m.Payload, &ack); err != nil || ack.VIN != vin {
		s.log.Warn("malformed whitelist ack", "vin", vin)
		return
	}
	nowMs := s.clk.Now().UnixMilli()
	var r record
	updated, adopted, retired := false, false, ""
	rotating, curKID := s.ring.Previous() != nil, s.ring.Current().KID()
	// Read-modify-write inside one transaction: a key change may have stored a newer version
	// since, and must not be rolled back by a stale copy.
	err := s.st.Update(context.Background(), func(tx kv.Tx) error {
		updated, adopted, retired = false, false, ""
		r = record{} // a second run decodes afresh
		b, err := tx.Get(bucketWhitelists, []byte(vin))
		if err != nil || b == nil {
			return err
		}
		if err := json.Unmarshal(b, &r); err != nil {
			return err
		}
		if ack.Version <= r.AckedVersion || ack.Version > r.Version {
			return nil
		}
		// This acknowledgement is the car's first of a version naming the current key.
		adopted = rotating && !r.trusts(curKID)
		r.AckedVersion, r.AckedMs = ack.Version, nowMs
		adopted = adopted && r.trusts(curKID)
		if r.RetireOnAck != 0 && r.AckedVersion >= r.RetireOnAck {
			// A decommissioned car has its empty whitelist: retire its credentials now, in
			// the transaction that records the acknowledgement.
			jti, err := newRetiredJTI()
			if err != nil {
				return err
			}
			if err := retireTx(tx, vin, jti, nowMs); err != nil {
				return err
			}
			r.RetireOnAck, r.Retired, retired = 0, true, jti
		}
		nb, err := json.Marshal(r)
		if err != nil {
			return err
		}
		updated = true
		return tx.Put(bucketWhitelists, []byte(vin), nb)
	})
	if err != nil {
		s.log.Error("store whitelist ack", "vin", vin, "err", err)
		return
	}
	if !updated {
		return
	}
	s.mu.Lock()
	if cur, ok := s.recs[vin]; ok && cur.AckedVersion < r.AckedVersion {
		cur.AckedVersion, cur.AckedMs = r.AckedVersion, r.AckedMs
		if retired != "" {
			cur.RetireOnAck, cur.Retired = 0, true
		}
		s.recs[vin] = cur
	}
	s.mu.Unlock()
	if retired != "" {
		s.credentialsRetired(vin, retired)
	}
	if adopted {
		// The car trusts the new key now: move it onto a whitelist signed by that key.
		// Done here, not on a goroutine of its own: no goroutine without an owner. Rotations
		// are rare, and an inline publish from a handler does not block.
		_, err := s.change(context.Background(), vin, func(tx kv.Tx, nowMs int64) (audit.Event, error) {
			return audit.Event{Kind: audit.KindKeys, VIN: vin, Outcome: "signing_key_adopted"}, nil
		})
		if err != nil {
			s.log.Error("move car to the new signing key", "vin", vin, "err", err)
		}
	}
}
