package keys

import (
	"context"
	"encoding/json"
	"fmt"

	"telematics/gateway/kv"
)

// NotOnKey returns, of vins, the cars that are not known to have acknowledged a whitelist
// signed by the signing key kid: a car with no whitelist yet, one whose newest whitelist is
// signed by another key, and one that has not acknowledged its newest whitelist (conservative:
// the first version signed by kid is not recorded, and a newer one is). Such a car may still
// trust only an older key. It reads the store alone, so `gateway rotate-key --retire-previous`
// can ask with the gateway stopped.
func NotOnKey(st kv.Store, vins []string, kid string) ([]string, error) {
	var out []string
	err := st.View(context.Background(), func(tx kv.Tx) error {
		for _, vin := range vins {
			raw, err := tx.Get(bucketWhitelists, []byte(vin))
			if err != nil {
				return err
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
