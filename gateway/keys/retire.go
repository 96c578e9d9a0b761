package keys

import (
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// NotOnKey returns, of vins, the cars that are not known to have acknowledged a whitelist
// signed by the signing key kid: a car with no whitelist yet, one whose newest whitelist is
// signed by another key, and one that has not acknowledged its newest whitelist (conservative:
// the first version signed by kid is not recorded, and a newer one is). Such a car may still
// trust only an older key. It reads db alone, so `gateway rotate-key --retire-previous` can ask
// with the gateway stopped.
func NotOnKey(db *bolt.DB, vins []string, kid string) ([]string, error) {
	var out []string
	err := db.View(func(tx *bolt.Tx) error {
		wb := tx.Bucket(bucketWhitelists)
		for _, vin := range vins {
			var raw []byte
			if wb != nil {
				raw = wb.Get([]byte(vin))
			}
			if raw == nil {
				out = append(out, vin)
				continue
			}
			var r record
			if err := json.Unmarshal(raw, &r); err != nil {
				return fmt.Errorf("whitelist record of %s: %w", vin, err)
			}
			if r.Version == 0 || r.Envelope.KID != kid || r.AckedVersion != r.Version {
				out = append(out, vin)
			}
		}
		return nil
	})
	return out, err
}
