package vehicle

import (
	"encoding/json"
	"errors"
	"math"
	"telematics/pkg/vehicle/carstore"
	"telematics/pkg/vehicle/vehicletest"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// FuzzStoredCar plants arbitrary records in a car's store (its state, its stored whitelist and
// its trust set, as a tampered or damaged file could hold them) and starts the car on them: no
// panic; a car that starts answers a real command with a result from the closed list and keeps
// producing telemetry with finite values.
func FuzzStoredCar(f *testing.F) {
	gw := fuzzGateway(f)
	car := fuzzCar(f, gw)
	// The store is closed while the inputs are planted with bbolt itself (bbolt locks the
	// file), and opened again for each input's car.
	st := car.store.(*carstore.Store)
	path := st.Path()
	st.Close()
	var seedState, seedWL, seedTrust []byte
	if err := rawCar(path, false, func(b *bolt.Bucket) error {
		seedState = append([]byte(nil), b.Get(rawKeyState)...)
		seedWL = append([]byte(nil), b.Get(rawKeyWhitelist)...)
		seedTrust = append([]byte(nil), b.Get(rawKeyTrust)...)
		return nil
	}); err != nil {
		f.Fatal(err)
	}
	trust, _ := json.Marshal([]string{vehicletest.EncodePub(f, gw.Signer)})
	f.Add(seedState, seedWL, seedTrust)
	f.Add(seedState, seedWL, trust)
	f.Add([]byte(`{"soc":-5,"speed_kmh":1e308,"phase_until_ms":-9223372036854775808,"heading_deg":720}`), seedWL, []byte(nil))
	f.Add([]byte(`null`), []byte(`{"doc":"e30"}`), []byte(`["x"]`))
	unlock := commandSeeds(f, gw)["unlock"]
	creds := gw.Creds(f, vehicletest.VIN)
	f.Fuzz(func(t *testing.T, state, wl, trust []byte) {
		if err := rawCar(path, true, func(b *bolt.Bucket) error {
			for _, kv := range []struct{ k, v []byte }{{rawKeyState, state}, {rawKeyWhitelist, wl}, {rawKeyTrust, trust}} {
				var err error
				if len(kv.v) == 0 {
					err = b.Delete(kv.k)
				} else {
					err = b.Put(kv.k, kv.v)
				}
				if err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		st, err := carstore.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Unsynced()
		clock := vehicletest.NewClock(vehicletest.T0)
		c, err := NewCar(st, creds, CarOptions{Clock: clock})
		if err != nil {
			return
		}
		checkResult(t, c.HandleCommand(unlock))
		for range 3 {
			clock.Advance(7 * time.Second)
			tel, err := c.NextTelemetry()
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tel.Signals {
				if x, ok := v.(float64); ok && (math.IsNaN(x) || math.IsInf(x, 0)) {
					t.Fatalf("signal %s = %v from stored state %q", k, x, state)
				}
			}
			if _, err := json.Marshal(tel); err != nil {
				t.Fatalf("telemetry does not encode: %v", err)
			}
		}
	})
}

// Keys of a car's bucket in the store file (carstore's layout: cars/{VIN}/…).
var (
	rawKeyState     = []byte("state")
	rawKeyWhitelist = []byte("whitelist")
	rawKeyTrust     = []byte("trust")
)

// rawCar runs fn on vehicletest.VIN's bucket of the closed store file at path, in a read-write
// transaction when write is set.
func rawCar(path string, write bool, fn func(*bolt.Bucket) error) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		return err
	}
	defer db.Close()
	tx := db.View
	if write {
		tx = db.Update
	}
	return tx(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("cars")).Bucket([]byte(vehicletest.VIN))
		if b == nil {
			return errors.New("no bucket for " + vehicletest.VIN)
		}
		return fn(b)
	})
}
