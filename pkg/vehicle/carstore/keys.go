package carstore

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"telematics/pkg/protocol"
)

// KeyRecord is what a car keeps of its digital keys.
type KeyRecord struct {
	// Envelope is the whitelist exactly as the gateway signed it.
	Envelope protocol.Envelope
	// Version is the whitelist's version.
	Version uint64
	// Trust is the set of gateway keys (base64url DER) the car trusts. Empty: the gateway_key
	// of the car's credentials.
	Trust []string
}

// LoadKeys returns the car's stored whitelist and trust set; found is false when the car has
// never stored a whitelist.
func (s *Store) LoadKeys(vin string) (rec KeyRecord, found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := carBucket(tx, vin)
		if b == nil {
			return nil
		}
		if raw := b.Get(keyTrust); raw != nil {
			if err := json.Unmarshal(raw, &rec.Trust); err != nil {
				return fmt.Errorf("trust: %w", err)
			}
		}
		raw := b.Get(keyWhitelist)
		if raw == nil {
			return nil
		}
		if err := json.Unmarshal(raw, &rec.Envelope); err != nil {
			return fmt.Errorf("whitelist: %w", err)
		}
		if v := b.Get(keyWhitelistVer); len(v) == 8 {
			rec.Version = binary.BigEndian.Uint64(v)
		}
		found = true
		return nil
	})
	if err != nil {
		return KeyRecord{}, false, fmt.Errorf("load keys of %s: %w", vin, err)
	}
	return rec, found, nil
}

// SaveKeys durably stores a whitelist, its version and, when rec.Trust is not empty, the new
// trust set, in one transaction. It fails with ErrStaleWhitelist (and writes nothing) unless
// rec.Version is higher than the stored version: no rollback, even between two cars' goroutines
// racing on one VIN.
func (s *Store) SaveKeys(vin string, rec KeyRecord) error {
	env, err := json.Marshal(rec.Envelope)
	if err != nil {
		return fmt.Errorf("encode whitelist of %s: %w", vin, err)
	}
	var trust []byte
	if len(rec.Trust) > 0 {
		if trust, err = json.Marshal(rec.Trust); err != nil {
			return fmt.Errorf("encode trust of %s: %w", vin, err)
		}
	}
	ver := binary.BigEndian.AppendUint64(nil, rec.Version)
	// Idempotent: the version check reads through tx, and the puts are the same on a rerun.
	err = s.commit.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketCars).CreateBucketIfNotExists([]byte(vin))
		if err != nil {
			return err
		}
		if v := b.Get(keyWhitelistVer); len(v) == 8 && binary.BigEndian.Uint64(v) >= rec.Version {
			return ErrStaleWhitelist
		}
		if err := b.Put(keyWhitelist, env); err != nil {
			return err
		}
		if err := b.Put(keyWhitelistVer, ver); err != nil {
			return err
		}
		if trust != nil {
			return b.Put(keyTrust, trust)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("save whitelist %d of %s: %w", rec.Version, vin, err)
	}
	return nil
}
