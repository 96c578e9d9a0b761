package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"telematics/gateway/kv"
	"telematics/pkg/protocol"
)

// The per-user index of roles on cars, for a shared store (etcd). Deleting a user must find
// every car they have a role on, in the transaction that deletes them; scanning every vehicle
// there does not fit in one etcd transaction past about 120 cars (--max-txn-ops). So on a
// shared store the vehicles' user maps are indexed in bucket user_vehicles, key USER/VIN, in
// the transactions that change them, and DeleteUser reads only the user's entries and their
// cars.
//
// meta/user_vehicles_index says how far the index goes: absent, nobody keeps it (a bbolt file:
// its format and its writes stay as they were, and DeleteUser scans every car as before);
// "building", every writer keeps it and OpenKV is filling it in from the vehicles;
// "complete", it names every car each user has a role on, and DeleteUser trusts it. A writer
// reads the marker in its transaction, so a writer that saw it absent conflicts with the
// Update that sets it and runs again (etcd's compare on every key read). An entry may outlive
// its role (a crash cannot cause it, but a downgraded replica could): DeleteUser checks each
// car it names; a role without an entry is what the marker rules out.

var (
	bucketUserVehicles = []byte("user_vehicles")
	keyUserIndex       = []byte("user_vehicles_index")
)

const (
	userIndexBuilding = "building"
	userIndexComplete = "complete"
	// userIndexBatch bounds the vehicles one build transaction indexes (a read each, and a
	// write per role: etcd's --max-txn-ops is 128).
	userIndexBatch = 20
)

func userVehicleKey(user, vin string) []byte { return []byte(user + "/" + vin) }

// userIndexState is the index marker inside tx ("" when nobody keeps the index).
func userIndexState(tx kv.Tx) (string, error) {
	v, err := tx.Get(bucketMeta, keyUserIndex)
	return string(v), err
}

// indexRolesTx keeps the index for vin's roles changing from old to new, when it is kept.
func indexRolesTx(tx kv.Tx, vin string, old, new map[string]protocol.Role) error {
	state, err := userIndexState(tx)
	if err != nil || state == "" {
		return err
	}
	for user := range old {
		if _, ok := new[user]; !ok {
			if err := tx.Delete(bucketUserVehicles, userVehicleKey(user, vin)); err != nil {
				return err
			}
		}
	}
	for user := range new {
		if _, ok := old[user]; !ok {
			if err := tx.Put(bucketUserVehicles, userVehicleKey(user, vin), []byte{}); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildUserIndex makes the index complete on a shared store that does not have it yet (its
// first open by this build, or state migrated from a bbolt file): "building" first, so every
// writer keeps it from then on, then every car's roles in batches, then "complete". Replicas
// opening at once build side by side: the entries are the same.
func (s *Store) buildUserIndex() error {
	ctx := context.Background()
	var state string
	err := s.kv.Update(ctx, func(tx kv.Tx) error {
		var err error
		if state, err = userIndexState(tx); err != nil || state != "" {
			return err
		}
		return tx.Put(bucketMeta, keyUserIndex, []byte(userIndexBuilding))
	})
	if err != nil || state == userIndexComplete {
		return err
	}
	var from []byte
	for {
		var vins []string
		err := s.kv.View(ctx, func(tx kv.Tx) error {
			vins = vins[:0]
			return tx.Scan(bucketVehicles, nil, from, func(k, _ []byte) error {
				if len(vins) == userIndexBatch {
					return kv.Stop
				}
				vins = append(vins, string(k))
				return nil
			})
		})
		if err != nil {
			return err
		}
		if len(vins) == 0 {
			break
		}
		err = s.kv.Update(ctx, func(tx kv.Tx) error {
			for _, vin := range vins {
				v, err := GetVehicleTx(tx, vin)
				if err != nil {
					if isNotFound(err) {
						continue // deleted meanwhile
					}
					return err
				}
				for user := range v.Users {
					if err := tx.Put(bucketUserVehicles, userVehicleKey(user, vin), []byte{}); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		from = append([]byte(vins[len(vins)-1]), 0) // the next key after the last
	}
	return s.kv.Update(ctx, func(tx kv.Tx) error { return tx.Put(bucketMeta, keyUserIndex, []byte(userIndexComplete)) })
}

// userVINsTx returns the cars user has a role on, in VIN order, inside tx: from the index
// when it is complete (each car read to check), else by scanning every car.
func userVINsTx(tx kv.Tx, user string) ([]string, error) {
	state, err := userIndexState(tx)
	if err != nil {
		return nil, err
	}
	var vins []string
	if state != userIndexComplete {
		err = tx.Scan(bucketVehicles, nil, nil, func(k, v []byte) error {
			var veh Vehicle
			if err := json.Unmarshal(v, &veh); err != nil {
				return err
			}
			if _, ok := veh.Users[user]; ok {
				vins = append(vins, string(k))
			}
			return nil
		})
		return vins, err
	}
	prefix := []byte(user + "/")
	var indexed []string
	err = tx.Scan(bucketUserVehicles, prefix, nil, func(k, _ []byte) error {
		if rest := k[len(prefix):]; !bytes.Contains(rest, []byte("/")) { // not another user's
			indexed = append(indexed, string(rest))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, vin := range indexed {
		v, err := GetVehicleTx(tx, vin)
		if isNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("user %q's car %s: %w", user, vin, err)
		}
		if _, ok := v.Users[user]; ok {
			vins = append(vins, vin)
		}
	}
	return vins, nil
}

// deleteUserIndexTx removes user's entries (left by roles that are gone) inside tx.
func deleteUserIndexTx(tx kv.Tx, user string) error {
	prefix := []byte(user + "/")
	var keys [][]byte
	err := tx.Scan(bucketUserVehicles, prefix, nil, func(k, _ []byte) error {
		if !bytes.Contains(k[len(prefix):], []byte("/")) { // not another user's
			keys = append(keys, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(bucketUserVehicles, k); err != nil {
			return err
		}
	}
	return nil
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
